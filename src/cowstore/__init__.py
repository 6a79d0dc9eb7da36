"""cowstore: copy-on-write storage of container image and container layers."""

__version__ = "0.1.0"
