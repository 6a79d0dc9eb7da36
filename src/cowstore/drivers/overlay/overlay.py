"""overlay (legacy): overlayfs with a single lower layer, the way Docker first used it.

Overlay could first stack only two branches, so every image layer is a complete tree,
`<id>/root/`, whose files unchanged since the parent are hard links to the parent's
(same inode, no space, shared page cache). A container (or a layer written through a
mount) in Docker's layout is `<id>/lower-id` naming the image layer whose root is its
only lowerdir, plus `upper/`, `work/` and the mount point `merged/`. Deep chains
therefore never need more than one lower layer; the price is one directory entry per
file per layer.

In the default compact layout, a container layer on an image layer is only its upper
dir, `<id>/`, with the lower id a note on its lock file; `merged/<id>/` exists while it
is mounted, both work dir and mount point (as overlay2 does, see overlay2.py). A layer
filled before any mount (an `-init` layer) becomes a complete tree at once, so the
containers on it mount it as their lower instead of each copying its upper dir. And
because a container's upper dir is exactly its changes against that one lower, diff
and commit read the upper dir alone.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import BinaryIO

from cowstore import archive
from cowstore.archive.changes import Change
from cowstore.drivers.common import transit
from cowstore.drivers.driver import MountSpec
from cowstore.drivers.overlay import kernel as ovl
from cowstore.drivers.overlay import upperdir
from cowstore.drivers.overlay.home import OverlayHome
from cowstore.errors import InvalidOption, LayerExists, LayerInUse, LayerNotFound, NotSupported
from cowstore.host import fsutil
from cowstore.host.copytree import copy_tree

_OVERLAY_SHAPE = ("upper", "work", "merged", "lower-id")
_MERGED_DIR = "merged"


class OverlayDriver(OverlayHome):
    name = "overlay"

    def __init__(self, home: pathlib.Path, options: Mapping[str, str]) -> None:
        super().__init__(home, options)
        for key in self.options:
            raise InvalidOption(f"overlay: unknown option {key}")
        self._open_home()
        self.mount_opts = ovl.mount_options()
        (home / _MERGED_DIR).mkdir(mode=0o700, exist_ok=True)
        transit.sweep(home, self.refs)

    def _compact(self, id: str) -> bool:
        return self.refs.note(id, "lower") is not None

    def _lower_id(self, id: str) -> str:
        note = self.refs.note(id, "lower")
        return note if note is not None else (self._dir(id) / "lower-id").read_text().strip()

    def _is_tree(self, id: str) -> bool:
        """Whether `id` is a complete tree (an image layer), not a mount over one."""
        return (self._dir(id) / "root").is_dir() and not self._compact(id)

    def _upper(self, id: str) -> pathlib.Path:
        return self._dir(id) if self._compact(id) else self._dir(id) / "upper"

    def _mount_point(self, id: str) -> pathlib.Path:
        return self.home / _MERGED_DIR / id if self._compact(id) else self._dir(id) / "merged"

    def create(self, id: str, parent: str | None, *, storage_opts: Mapping[str, str] | None = None) -> None:
        self._create(id, parent, storage_opts, compact=False)

    def create_rw(self, id: str, parent: str | None, *, storage_opts: Mapping[str, str] | None = None) -> None:
        self._create(id, parent, storage_opts, compact=not self.docker_layout)

    def _create(self, id: str, parent: str | None, storage_opts: Mapping[str, str] | None, *, compact: bool) -> None:
        if storage_opts:
            raise NotSupported("--storage-opt is not supported for overlay")
        target = self._dir(id)
        with self.refs.locked(id):
            if target.exists():
                raise LayerExists(f"layer {id} already exists")
            if parent is not None and not self._dir(parent).is_dir():
                raise LayerNotFound(f"parent layer {parent} does not exist")
            staging = transit.transit_path(self.home, id, transit.CREATING)
            try:
                if compact and parent is not None and self._is_tree(parent):
                    staging.mkdir(mode=os.stat(self._dir(parent) / "root").st_mode & 0o7777)
                    self.refs.set_note(id, "lower", parent)
                else:
                    staging.mkdir(mode=0o710)
                    self._populate(staging, parent)
                os.rename(staging, target)
            except BaseException:
                fsutil.remove_tree(staging)
                raise

    def _populate(self, staging: pathlib.Path, parent: str | None) -> None:
        if parent is None:
            (staging / "root").mkdir(mode=0o755)
            return
        parent_dir = self._dir(parent)
        upper = staging / "upper"
        if self._is_tree(parent):
            lower_id = parent
            upper.mkdir(mode=os.stat(parent_dir / "root").st_mode & 0o7777)
        else:
            # The parent is itself a mount (an -init layer): share its lower and start
            # from a copy of its changes, whiteouts and opaque markers included.
            lower_id = self._lower_id(parent)
            upper.mkdir(mode=0o755)
            copy_tree(self._upper(parent), upper)
        (staging / "work").mkdir(mode=0o700)
        (staging / "lower-id").write_text(lower_id)

    def get(self, id: str) -> pathlib.Path:
        layer = self._dir(id)
        with self.refs.locked(id) as ref:
            if not layer.is_dir():
                raise LayerNotFound(f"layer {id} does not exist")
            if self._is_tree(id):
                return layer / "root"
            merged = self._mount_point(id)
            ovl.acquire_mount(ref, merged, lambda: self._spec(id))
            return merged

    def _spec(self, id: str) -> ovl.OverlaySpec:
        lower = [f"{self._lower_id(id)}/root"]
        if self._compact(id):
            return ovl.OverlaySpec(self.home, lower, id, f"{_MERGED_DIR}/{id}", self.mount_opts)
        return ovl.OverlaySpec(self.home, lower, f"{id}/upper", f"{id}/work", self.mount_opts)

    def put(self, id: str) -> None:
        layer = self._dir(id)
        with self.refs.locked(id) as ref:
            if not layer.is_dir():
                raise LayerNotFound(f"layer {id} does not exist")
            if not self._is_tree(id):
                ovl.release_mount(ref, self._mount_point(id), holds_work=self._compact(id))

    def fill(self, id: str, write: Callable[[pathlib.Path], None]) -> None:
        """Make the fresh layer a complete tree (a hard-linked copy of its lower) with
        what `write` adds: no mount, and the containers on it need no copy of it."""
        if self.docker_layout or self._is_tree(id):
            super().fill(id, write)
            return
        with self.refs.locked(id) as ref:
            self._make_tree(id, self._lower_id(id), write, ref.reset)

    def status(self) -> list[tuple[str, str]]:
        return [("Backing Filesystem", self.backing), ("Supports d_type", "true")]

    def metadata(self, id: str) -> dict[str, str]:
        layer = self._dir(id)
        if not layer.is_dir():
            raise LayerNotFound(f"layer {id} does not exist")
        if self._is_tree(id):
            return {"RootDir": str(layer / "root")}
        merged = self._mount_point(id)
        return {
            "LowerDir": str(self.home / self._lower_id(id) / "root"),
            "UpperDir": str(self._upper(id)),
            "WorkDir": str(merged if self._compact(id) else layer / "work"),
            "MergedDir": str(merged),
        }

    def external_mounts(self, id: str, *, readonly: bool) -> list[MountSpec]:
        """A complete tree (`root/`) is a bind; a layer on one is an overlay of its `upper/` on
        that root, or for a read-only view, the two stacked as lowers."""
        if self._compact(id):
            raise NotSupported(
                f"layer {id} is a container layer in the compact layout, which only this driver mounts: "
                "make layers that another program mounts with create"
            )
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
        if parent is None or not self._is_tree(parent) or not (layer / "upper").is_dir():
            return super().apply_diff(id, parent, stream)
        with self.refs.locked(id) as ref:
            if ovl.is_mounted(layer / "merged"):
                raise LayerInUse(f"overlay: layer {id} is mounted; put it before applying a diff")
            return self._make_tree(
                id, parent, lambda root: archive.apply_layer(stream, root, whiteouts="oci"), ref.reset
            )

    def _make_tree(self, id: str, lower: str, write: Callable[[pathlib.Path], int | None], reset: Callable) -> int:
        """Turn mount layer `id` (lock held) into `<id>/root`: a hard-linked copy of its
        lower's root, then `write`; returns what `write` returns, or 0."""
        layer = self._dir(id)
        staging = layer / f"tmproot-{os.urandom(4).hex()}"
        staging.mkdir(mode=0o755)
        try:
            copy_tree(self._dir(lower) / "root", staging, hardlink=True)
            size = write(staging) or 0
            os.rename(staging, layer / "root")
        except BaseException:
            fsutil.remove_tree(staging)
            raise
        for name in _OVERLAY_SHAPE:  # not mounted: the caller checked, or it never was
            with contextlib.suppress(FileNotFoundError):
                fsutil.remove_tree(layer / name, unmount=False)
        self.refs.drop_note(id, "lower")
        reset()
        return size

    # ------------------------------------------------------------ native diff

    def _native(self, id: str, parent: str | None) -> bool:
        """Whether `id`'s upper dir is exactly its changeset against `parent`: its one lower."""
        return (
            parent is not None
            and not ovl.in_user_namespace()
            and self.exists(id)
            and not self._is_tree(id)
            and self._lower_id(id) == parent
        )

    def changes(self, id: str, parent: str | None = None) -> list[Change]:
        if parent is not None and self.exists(parent) and self._is_tree(parent) and self._is_tree(id):
            # An image layer's root began as a hard-linked copy of its parent's: an entry
            # that is another inode than its twin was replaced, and is compared by content
            # where Docker's rule sees nothing.
            return archive.changes_dirs(self._dir(id) / "root", self._dir(parent) / "root", linked=True)
        if not self._native(id, parent) or parent is None:
            return super().changes(id, parent)
        return upperdir.upper_changes(self._upper(id), self._dir(parent) / "root")
