"""vfs: every layer a full copy of its parent; needs no kernel feature at all."""

from cowstore.drivers.vfs.driver import VfsDriver

__all__ = ["VfsDriver"]
