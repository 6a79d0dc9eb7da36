"""overlay (legacy): overlayfs with a single lower layer, the way Docker first used it.

Overlay could first stack only two branches, so every image layer is a complete tree,
`<id>/root/`, whose files unchanged since the parent are hard links to the parent's
(same inode, no space, shared page cache). A container (or a layer written through a
mount) is `<id>/lower-id` naming the image layer whose root is its only lowerdir, plus
`upper/`, `work/` and the mount point `merged/`. Deep chains therefore never need
more than one lower layer; the price is one directory entry per file per layer.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
from collections.abc import Mapping
from typing import BinaryIO

from cowstore import archive
from cowstore.drivers.common import transit
from cowstore.drivers.driver import MountSpec
from cowstore.drivers.overlay import kernel as ovl
from cowstore.drivers.overlay.home import OverlayHome
from cowstore.errors import InvalidOption, LayerExists, LayerInUse, LayerNotFound, NotSupported
from cowstore.host import fsutil
from cowstore.host.copytree import copy_tree

_OVERLAY_SHAPE = ("upper", "work", "merged", "lower-id")


class OverlayDriver(OverlayHome):
    name = "overlay"

    def __init__(self, home: pathlib.Path, options: Mapping[str, str]) -> None:
        super().__init__(home, options)
        for key in self.options:
            raise InvalidOption(f"overlay: unknown option {key}")
        self._open_home()
        self.mount_opts = ovl.mount_options()
        transit.sweep(home, self.refs)

    def _lower_id(self, id: str) -> str:
        return (self._dir(id) / "lower-id").read_text().strip()

    def create(self, id: str, parent: str | None, *, storage_opts: Mapping[str, str] | None = None) -> None:
        if storage_opts:
            raise NotSupported("--storage-opt is not supported for overlay")
        target = self._dir(id)
        with self.refs.locked(id):
            if target.exists():
                raise LayerExists(f"layer {id} already exists")
            if parent is not None and not self._dir(parent).is_dir():
                raise LayerNotFound(f"parent layer {parent} does not exist")
            staging = transit.transit_path(self.home, id, transit.CREATING)
            staging.mkdir(mode=0o710)
            try:
                self._populate(staging, parent)
                os.rename(staging, target)
            except BaseException:
                fsutil.remove_tree(staging)
                raise

    def create_rw(self, id: str, parent: str | None, *, storage_opts: Mapping[str, str] | None = None) -> None:
        self.create(id, parent, storage_opts=storage_opts)

    def _populate(self, staging: pathlib.Path, parent: str | None) -> None:
        if parent is None:
            (staging / "root").mkdir(mode=0o755)
            return
        parent_dir = self._dir(parent)
        upper = staging / "upper"
        if (parent_dir / "root").is_dir():
            lower_id = parent
            upper.mkdir(mode=os.stat(parent_dir / "root").st_mode & 0o7777)
        else:
            # The parent is itself a mount (an -init layer): share its lower and start
            # from a copy of its changes, whiteouts and opaque markers included.
            lower_id = self._lower_id(parent)
            upper.mkdir(mode=0o755)
            copy_tree(parent_dir / "upper", upper)
        (staging / "work").mkdir(mode=0o700)
        (staging / "lower-id").write_text(lower_id)

    def get(self, id: str) -> pathlib.Path:
        layer = self._dir(id)
        with self.refs.locked(id) as ref:
            if not layer.is_dir():
                raise LayerNotFound(f"layer {id} does not exist")
            if (layer / "root").is_dir():
                return layer / "root"
            merged = layer / "merged"
            ovl.acquire_mount(ref, merged, lambda: self._spec(id))
            return merged

    def _spec(self, id: str) -> ovl.OverlaySpec:
        return ovl.OverlaySpec(self.home, [f"{self._lower_id(id)}/root"], f"{id}/upper", f"{id}/work", self.mount_opts)

    def put(self, id: str) -> None:
        layer = self._dir(id)
        with self.refs.locked(id) as ref:
            if not layer.is_dir():
                raise LayerNotFound(f"layer {id} does not exist")
            if not (layer / "root").is_dir():
                ovl.release_mount(ref, layer / "merged")

    def status(self) -> list[tuple[str, str]]:
        return [("Backing Filesystem", self.backing), ("Supports d_type", "true")]

    def metadata(self, id: str) -> dict[str, str]:
        layer = self._dir(id)
        if not layer.is_dir():
            raise LayerNotFound(f"layer {id} does not exist")
        if (layer / "root").is_dir():
            return {"RootDir": str(layer / "root")}
        return {
            "LowerDir": str(self.home / self._lower_id(id) / "root"),
            "UpperDir": str(layer / "upper"),
            "WorkDir": str(layer / "work"),
            "MergedDir": str(layer / "merged"),
        }

    def external_mounts(self, id: str, *, readonly: bool) -> list[MountSpec]:
        """A complete tree (`root/`) is a bind; a layer on one is an overlay of its `upper/` on
        that root, or for a read-only view, the two stacked as lowers."""
        layer = self._dir(id)
        if (layer / "root").is_dir():
            return [MountSpec.bind(layer / "root", readonly=readonly)]
        if not layer.is_dir():
            raise LayerNotFound(f"layer {id} does not exist")
        lower = self.home / self._lower_id(id) / "root"
        if readonly:
            return [ovl.external_mount([layer / "upper", lower], None, None, self.mount_opts)]
        return [ovl.external_mount([lower], layer / "upper", layer / "work", self.mount_opts)]

    def apply_diff(self, id: str, parent: str | None, stream: BinaryIO) -> int:
        """An image layer on an image layer becomes a hard-linked copy of the parent's
        root with the tar applied; applying unlinks before it writes, so the parent's
        inodes are never touched."""
        layer = self._dir(id)
        if parent is None or not (self._dir(parent) / "root").is_dir() or not (layer / "upper").is_dir():
            return super().apply_diff(id, parent, stream)
        with self.refs.locked(id) as ref:
            if ovl.is_mounted(layer / "merged"):
                raise LayerInUse(f"overlay: layer {id} is mounted; put it before applying a diff")
            staging = layer / f"tmproot-{secrets.token_hex(4)}"
            staging.mkdir(mode=0o755)
            try:
                copy_tree(self._dir(parent) / "root", staging, hardlink=True)
                size = archive.apply_layer(stream, staging, whiteouts="oci")
                os.rename(staging, layer / "root")
            except BaseException:
                fsutil.remove_tree(staging)
                raise
            for name in _OVERLAY_SHAPE:
                with contextlib.suppress(FileNotFoundError):
                    fsutil.remove_tree(layer / name)
            ref.reset()
            return size
