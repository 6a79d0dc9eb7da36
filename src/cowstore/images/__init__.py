"""Images: OCI configs over layer chains, tags, and the docker-save / OCI / rootfs formats."""

from cowstore.images.errors import BadImageArchive, ImageInUse, ImageNotFound, InvalidReference
from cowstore.images.rootfs import import_rootfs
from cowstore.images.store import Image, ImageStore
from cowstore.images.transfer import FORMATS, load, save

__all__ = [
    "FORMATS",
    "BadImageArchive",
    "Image",
    "ImageInUse",
    "ImageNotFound",
    "ImageStore",
    "InvalidReference",
    "import_rootfs",
    "load",
    "save",
]
