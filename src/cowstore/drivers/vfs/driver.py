"""vfs: every layer is a complete, independent copy of its parent (no copy-on-write).

Needs no kernel feature at all, which is why it is the driver to port first and the
fallback of last resort. Layout as Docker's, `vfs/dir/<id>/`, plus the per-id lock
files of `vfs/mountpoints/` (vfs never mounts; the name is MountRefs').

A layer copied from its parent keeps, as a note on its lock file, the parent's id and
the filesystem's clock once the copy was done: whatever was written since has a newer
ctime, so the changes against that parent are found without comparing the untouched
rest of the two trees (see `changes_dirs`).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

from cowstore.archive import changes_dirs
from cowstore.archive.changes import Change
from cowstore.archive.whiteouts import OVERLAY_XATTR_PREFIXES
from cowstore.drivers.common import transit
from cowstore.drivers.common.plaindirs import PlainDirectories
from cowstore.drivers.common.refcount import MountRefs
from cowstore.drivers.driver import MountSpec
from cowstore.drivers.naive import NaiveDiffDriver
from cowstore.errors import InvalidOption, LayerExists, LayerNotFound, NotSupported
from cowstore.host import fsutil
from cowstore.host.copytree import copy_tree
from cowstore.host.quota import ProjectQuota
from cowstore.units import parse_size


class VfsDriver(PlainDirectories, NaiveDiffDriver):
    name = "vfs"
    files_in_home = True

    def __init__(self, home: pathlib.Path, options: Mapping[str, str]) -> None:
        super().__init__(home, options)
        for key in self.options:
            if key != "size":
                raise InvalidOption(f"unknown option {key} for vfs")
        self.layers_dir = home / "dir"
        self.layers_dir.mkdir(mode=0o710, parents=True, exist_ok=True)
        self.refs = MountRefs(home)
        transit.sweep(self.layers_dir, self.refs)
        self._quota: ProjectQuota | None = None
        self.default_size = parse_size(self.options["size"]) if "size" in self.options else None
        if self.default_size is not None:
            self._quota = ProjectQuota(self.home)

    def _quota_for(self, size: int | None) -> ProjectQuota | None:
        """Project quotas are probed only when a size is asked for (QuotaNotSupported if absent)."""
        if size is not None and self._quota is None:
            self._quota = ProjectQuota(self.home)
        return self._quota if size is not None else None

    def create(self, id: str, parent: str | None, *, storage_opts: Mapping[str, str] | None = None) -> None:
        if storage_opts:
            raise NotSupported("--storage-opt is not supported for vfs on read-only layers")
        self._create(id, parent)

    def create_rw(self, id: str, parent: str | None, *, storage_opts: Mapping[str, str] | None = None) -> None:
        opts = dict(storage_opts or {})
        for key in opts:
            if key != "size":
                raise InvalidOption(f"storage opt {key} not supported")
        size = parse_size(opts["size"]) if "size" in opts else self.default_size
        self._create(id, parent, size)

    def _create(self, id: str, parent: str | None, size: int | None = None) -> None:
        target = self._path(id)
        with self.refs.locked(id):
            if target.exists():
                raise LayerExists(f"layer {id} already exists")
            if parent is not None and not self.exists(parent):
                raise LayerNotFound(f"parent layer {parent} does not exist")
            # Build under a temporary name so a crash never leaves a half-copied layer
            # under the real id; the lock keeps other processes' sweeps off it.
            staging = transit.transit_path(self.layers_dir, id, transit.CREATING)
            staging.mkdir(mode=0o755)
            try:
                quota = self._quota_for(size)
                if quota is not None and size is not None:
                    quota.set(staging, size)
                if parent is not None:
                    copy_tree(self._path(parent), staging, skip_xattrs=OVERLAY_XATTR_PREFIXES)
                    self.refs.set_note(id, "copied", f"{self._clock(staging)} {parent}")
                os.rename(staging, target)
            except BaseException:
                fsutil.remove_tree(staging)
                raise

    @staticmethod
    def _clock(directory: pathlib.Path) -> int:
        """The filesystem's own time now (the ctime of a file made and dropped), in ns.

        Its clock, not Python's: ctimes come from a coarse kernel clock that may lag
        a finer reading by a few milliseconds.
        """
        probe = directory / ".copied"
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        try:
            return os.fstat(fd).st_ctime_ns
        finally:
            os.close(fd)
            os.unlink(probe)

    def changes(self, id: str, parent: str | None = None) -> list[Change]:
        note = self.refs.note(id, "copied")
        if parent is None or note is None or note.split(" ", 1)[1] != parent:
            return super().changes(id, parent)
        return changes_dirs(self.get(id), self.get(parent), copied_before=int(note.split(" ", 1)[0]))

    def remove(self, id: str) -> None:
        path = self._path(id)
        with self.refs.locked(id):
            fsutil.remove_tree(path)
            self.refs.forget(id)

    def get(self, id: str) -> pathlib.Path:
        path = self._path(id)
        if not path.is_dir():
            raise LayerNotFound(f"layer {id} does not exist")
        return path

    def metadata(self, id: str) -> dict[str, str]:
        return {"SourceDir": str(self.get(id))}

    def external_mounts(self, id: str, *, readonly: bool) -> list[MountSpec]:
        """Every layer is a complete tree: a bind of it (containerd's native snapshotter does the same)."""
        return [MountSpec.bind(self.get(id), readonly=readonly)]
