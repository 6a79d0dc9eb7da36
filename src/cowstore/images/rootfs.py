"""`docker import`: a plain root-filesystem tar (any compression) becomes a one-layer image."""

from __future__ import annotations

import contextlib
from typing import BinaryIO

from cowstore.images import reference
from cowstore.images.compression import decompressed
from cowstore.images.config import encode, rootfs_config
from cowstore.images.store import Image, ImageStore


def import_rootfs(
    images: ImageStore,
    stream: BinaryIO,
    what: str,
    *,
    tag: str | None = None,
    message: str = "",
    cmd: list[str] | None = None,
) -> Image:
    """Register `stream` as the only layer of a new image with a fresh config."""
    tags = [reference.normalize(tag)] if tag else []
    plain, _ = decompressed(stream, what)
    with contextlib.closing(plain), images.layers.lease() as lease:
        layer = images.layers.register(plain, lease=lease)
        config = rootfs_config(layer.diff_id, comment=message, created_by=f"cowstore import {what}", cmd=cmd)
        return images.add(encode(config), layer.chain_id, tags, lease=lease)
