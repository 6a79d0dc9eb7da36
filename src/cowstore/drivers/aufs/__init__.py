"""aufs: union branches per layer, served by the kernel's aufs or by cowstore's FUSE union (`unionfs`)."""

from cowstore.drivers.aufs.driver import AufsDriver

__all__ = ["AufsDriver"]
