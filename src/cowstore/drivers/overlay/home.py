"""What both overlay drivers share: their home directory, one directory per layer id.

A home lives on a filesystem overlayfs can use as upper layer (not overlayfs itself,
with d_type), next to the drivers' own entries (`l/` short links of overlay2,
`mountpoints/` counts). Layers are deleted under a `-removing` name, so a crash
half-way through leaves nothing under the layer's id.
"""

from __future__ import annotations

import os
import pathlib
import stat
from collections.abc import Sequence
from typing import BinaryIO

from cowstore import archive
from cowstore.drivers.common import ids, transit
from cowstore.drivers.common.refcount import MountRefs
from cowstore.drivers.naive import NaiveDiffDriver
from cowstore.drivers.overlay.kernel import unmount
from cowstore.errors import InvalidOption, LayerNotFound, NotSupported
from cowstore.host import fsutil

# Layer ids become directory names next to the driver's own bookkeeping entries.
_RESERVED_IDS = {"l", "merged", "mountpoints"}
_D_TYPE_HINTS = {"xfs": " (reformat with mkfs.xfs -n ftype=1)", "extfs": " (tune2fs -O filetype)"}
# Filesystems where one fsync commits the journal with every metadata change made before
# it, in any directory: ext4 (Docker's extfs) and xfs. btrfs logs the fsynced inode alone.
_ORDERED_JOURNAL = ("extfs", "xfs")


def check_id(id: str) -> str:
    """Refuse ids that would escape the home or collide with the driver's own entries."""
    if id in _RESERVED_IDS:
        raise InvalidOption(f"invalid layer id {id!r}: the name is reserved by the overlay drivers")
    return ids.check_id(id)


class OverlayHome(NaiveDiffDriver):
    """The home, the layer directories and their removal, for overlay and overlay2."""

    files_in_home = True

    def _open_home(self) -> None:
        """NotSupported unless the kernel has overlayfs and the home's filesystem suits it."""
        if not fsutil.kernel_has_fs("overlay"):
            raise NotSupported(f"{self.name}: the kernel has no overlay filesystem (modprobe overlay)")
        self.home.mkdir(mode=0o710, parents=True, exist_ok=True)
        self.backing = fsutil.backing_fs(self.home)
        if self.backing == "overlayfs":
            raise NotSupported(f"{self.name}: the store cannot live on overlayfs itself; put it on ext4, xfs or btrfs")
        if not fsutil.supports_d_type(self.home):
            raise NotSupported(
                f"{self.name}: the backing {self.backing} filesystem is formatted without d_type support, "
                f"which leads to incorrect behavior{_D_TYPE_HINTS.get(self.backing, '')}"
            )
        self.refs = MountRefs(self.home)

    def _dir(self, id: str) -> pathlib.Path:
        return self.home / check_id(id)

    def sync(self, layers: Sequence[str]) -> None:
        """Put new layers on disk by fsyncs of their own files where the journal allows, not syncfs.

        A layer just made is directories, empty files, notes in xattrs and short links:
        metadata, which on ext4 and xfs is on disk once the journal holding it is. An
        fsync of the home commits the journal up to the home's last change (the rename
        that put the layer in place, the last step of a create) with all made before it.
        Only new files with data need their own fsync first (legacy overlay's `lower-id`),
        not hard links to the files of an image layer (legacy overlay's `-init` trees),
        which were on disk before the layer was stored.
        syncfs would also write back every other dirty page of the filesystem (the
        database's, other containers' files) and wait for it.
        """
        if self.backing not in _ORDERED_JOURNAL:
            super().sync(layers)
            return
        for id in layers:
            for top, _, files in fsutil.walk(str(self._dir(id))):
                for name in files:
                    path = os.path.join(top, name)
                    st = os.lstat(path)
                    if stat.S_ISREG(st.st_mode) and st.st_size and st.st_nlink == 1:
                        fsutil.fsync(path)
        fsutil.fsync(self.home)

    def storage_paths(self, id: str) -> list[pathlib.Path]:
        """The layer's directory: its files (and legacy overlay's hard links, counted once)."""
        return [self._dir(id)]

    def _forget_links(self, id: str) -> None:
        """Drop what points at layer `id` from outside its directory (overlay2's short link)."""

    def _mount_point(self, id: str) -> pathlib.Path:
        """Where layer `id` is mounted: Docker's `<id>/merged`, unless the layer is compact."""
        return self._dir(id) / "merged"

    def remove(self, id: str) -> None:
        layer = self._dir(id)
        with self.refs.locked(id) as ref:
            if not layer.is_dir():
                return
            self._forget_links(id)
            target = self._mount_point(id)
            unmount(target)
            ref.reset()
            if not target.is_relative_to(layer):
                fsutil.remove_tree(target, unmount=False)
            doomed = transit.transit_path(self.home, id, transit.REMOVING)
            os.rename(layer, doomed)
            fsutil.remove_tree(doomed)
            self.refs.forget(id)

    def exists(self, id: str) -> bool:
        try:
            return (self.home / check_id(id)).is_dir()
        except InvalidOption:
            return False

    def ids(self) -> list[str]:
        with os.scandir(self.home) as it:
            return sorted(
                e.name
                for e in it
                if e.is_dir(follow_symlinks=False) and not e.name.startswith(".") and e.name not in _RESERVED_IDS
            )

    def cleanup(self) -> None:
        transit.unmount_below(self.home)

    # ------------------------------------------------------------ native diff

    def _native(self, id: str, parent: str | None) -> bool:
        """Whether `id`'s upper dir is exactly its changeset against `parent`."""
        return False

    def _upper(self, id: str) -> pathlib.Path:
        """The layer's upper dir (for a layer `_native` accepts)."""
        raise LayerNotFound(f"layer {id} has no upper dir")

    def diff(self, id: str, parent: str | None = None) -> BinaryIO:
        if not self._native(id, parent):
            return super().diff(id, parent)
        tree = self._upper(id)
        from cowstore.host.pipestream import piped  # a thread only a diff needs

        return piped(lambda out: archive.tar_directory(tree, out, whiteouts="overlay"), f"diff {id}")

    def diff_size(self, id: str, parent: str | None = None) -> int:
        if not self._native(id, parent):
            return super().diff_size(id, parent)
        return fsutil.tree_size(self._upper(id))
