"""Errors of the image layer: each names the image, reference or archive entry at fault."""

from cowstore.errors import CowstoreError


class ImageNotFound(CowstoreError):
    """No image has this id, id prefix or tag."""


class InvalidReference(CowstoreError):
    """A `name:tag` reference is not well formed."""


class ImageInUse(CowstoreError):
    """The image is used by a container or has several tags and removal was not forced."""


class BadImageArchive(CowstoreError):
    """A docker-save archive, OCI layout or manifest is malformed or names missing content."""


class ArchiveToTerminal(CowstoreError):
    """`save` or `export` was asked to write a binary archive to a terminal."""
