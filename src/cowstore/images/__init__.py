"""Images: OCI configs over layer chains, tags, and the docker-save / OCI / rootfs formats.

The names below are imported on first use: listing images needs the image store, not
the archive formats and their decompressors.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cowstore.images.errors import BadImageArchive, ImageInUse, ImageNotFound, InvalidReference
    from cowstore.images.rootfs import import_rootfs
    from cowstore.images.store import Image, ImageStore
    from cowstore.images.transfer import FORMATS, load, save

_HOMES = {
    "BadImageArchive": "errors",
    "ImageInUse": "errors",
    "ImageNotFound": "errors",
    "InvalidReference": "errors",
    "import_rootfs": "rootfs",
    "Image": "store",
    "ImageStore": "store",
    "FORMATS": "transfer",
    "load": "transfer",
    "save": "transfer",
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
