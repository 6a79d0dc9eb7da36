"""How each graphdriver keeps layers in a data root, read without that driver.

Two things are needed of a driver's storage: where a layer's own files are (to replay
its tar-split), and a container's changes as an OCI changeset. The layouts are
Docker's (see "Deep dive into Docker storage drivers" for the ideas behind them):

- vfs `vfs/dir/<id>` and btrfs `btrfs/subvolumes/<id>` hold every layer as a complete
  tree, so a container's changes come from comparing its tree with its `-init` layer's,
  as Docker's naive diff does; devicemapper (`devmapper`) is the same once each thin
  device is mounted;
- overlay2 `overlay2/<id>/diff` and aufs `aufs/diff/<id>` hold only a layer's own
  files, with whiteouts (0:0 character devices and the opaque xattr for overlay,
  `.wh.` files for aufs), so a container's changes are its directory, converted;
- legacy overlay holds image layers as complete `root/` trees (hard links to the
  parent's unchanged files) and containers as `upper/` over one `root/`; a container's
  upper also holds a copy of its `-init` layer's upper, which is compared away.
"""

from __future__ import annotations

import abc
import contextlib
import os
import pathlib
import stat
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO

from cowstore.archive import changes_dirs, changes_size, export_changes, tar_directory
from cowstore.archive.changes import Change
from cowstore.archive.whiteouts import META_PREFIX, OVERLAY_XATTR_PREFIXES
from cowstore.dockerroot.layout import BadObject, DockerRoot
from cowstore.errors import InvalidArgument, NotSupported
from cowstore.host import fsutil

if TYPE_CHECKING:
    from cowstore.dockerroot.devmapper import PoolDevices

# overlay features that put what a tar cannot say into an upper dir's xattrs.
_UNSUPPORTED_OVERLAY_XATTRS = ("redirect", "metacopy")


class Storage(abc.ABC):
    """The layers of one driver's storage in a data root, read-only."""

    def __init__(self, root: DockerRoot) -> None:
        self.root = root
        self.home = root.home

    def close(self) -> None:  # noqa: B027 - optional: only devicemapper has something to release
        """Release what reading needed (mounts, helper servers)."""

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dir(self, *parts: str) -> pathlib.Path:
        path = self.home.joinpath(*parts)
        st = fsutil.lstat_or_none(path)
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise BadObject(f"{path} is missing from the {self.root.driver} storage")
        return path

    @abc.abstractmethod
    def layer_files(self, cache_id: str) -> contextlib.AbstractContextManager[pathlib.Path]:
        """The directory in which a layer's tar-split finds its files by name."""

    @abc.abstractmethod
    def write_changes(self, mount_id: str, base_id: str | None, out: BinaryIO) -> None:
        """A container layer's changes against `base_id` (its -init layer) as an OCI changeset tar."""

    @abc.abstractmethod
    def changes_size(self, mount_id: str, base_id: str | None) -> int:
        """Bytes of a container layer's changes (Docker's SizeRw)."""


class FullCopies(Storage):
    """Drivers that keep every layer as a complete tree: changes by comparing two trees."""

    @abc.abstractmethod
    def tree(self, id: str) -> contextlib.AbstractContextManager[pathlib.Path]:
        """The complete tree of layer `id`."""

    def layer_files(self, cache_id: str) -> contextlib.AbstractContextManager[pathlib.Path]:
        return self.tree(cache_id)

    @contextlib.contextmanager
    def _compared(self, mount_id: str, base_id: str | None) -> Iterator[tuple[pathlib.Path, list[Change]]]:
        with self.tree(mount_id) as new, contextlib.ExitStack() as stack:
            old = stack.enter_context(self.tree(base_id)) if base_id else None
            yield new, changes_dirs(new, old)

    def write_changes(self, mount_id: str, base_id: str | None, out: BinaryIO) -> None:
        with self._compared(mount_id, base_id) as (new, changes):
            export_changes(new, changes, out)

    def changes_size(self, mount_id: str, base_id: str | None) -> int:
        with self._compared(mount_id, base_id) as (new, changes):
            return changes_size(new, changes)


class Vfs(FullCopies):
    @contextlib.contextmanager
    def tree(self, id: str) -> Iterator[pathlib.Path]:
        yield self._dir("dir", id)


class Btrfs(FullCopies):
    @contextlib.contextmanager
    def tree(self, id: str) -> Iterator[pathlib.Path]:
        yield self._dir("subvolumes", id)


def _check_plain_upper(upper: pathlib.Path) -> None:
    """Refuse an upper dir whose meaning lives in redirect or metacopy xattrs."""
    for rel, _ in fsutil.walk_tree(os.fspath(upper)):
        path = os.path.join(upper, rel)
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError:
            continue
        for name in names:
            if name.startswith(OVERLAY_XATTR_PREFIXES) and name.rpartition(".")[2] in _UNSUPPORTED_OVERLAY_XATTRS:
                raise NotSupported(f"{path} carries {name}: overlay redirects and metacopy cannot be exported")


class Overlay2(Storage):
    @contextlib.contextmanager
    def layer_files(self, cache_id: str) -> Iterator[pathlib.Path]:
        yield self._dir(cache_id, "diff")

    def write_changes(self, mount_id: str, base_id: str | None, out: BinaryIO) -> None:
        upper = self._dir(mount_id, "diff")
        _check_plain_upper(upper)
        tar_directory(upper, out, whiteouts="overlay")

    def changes_size(self, mount_id: str, base_id: str | None) -> int:
        return fsutil.tree_size(self._dir(mount_id, "diff"))


class Overlay(Storage):
    @contextlib.contextmanager
    def layer_files(self, cache_id: str) -> Iterator[pathlib.Path]:
        layer = self._dir(cache_id)
        yield layer / "root" if (layer / "root").is_dir() else self._dir(cache_id, "upper")

    def _base_upper(self, base_id: str | None) -> pathlib.Path | None:
        """The -init layer's upper, which the container's upper started as a copy of."""
        if base_id is None or (self._dir(base_id) / "root").is_dir():
            return None
        return self._dir(base_id, "upper")

    def write_changes(self, mount_id: str, base_id: str | None, out: BinaryIO) -> None:
        upper = self._dir(mount_id, "upper")
        _check_plain_upper(upper)
        base = self._base_upper(base_id)
        if base is None:
            tar_directory(upper, out, whiteouts="overlay")
        else:
            export_changes(upper, changes_dirs(upper, base), out, whiteouts="overlay")

    def changes_size(self, mount_id: str, base_id: str | None) -> int:
        upper = self._dir(mount_id, "upper")
        base = self._base_upper(base_id)
        return fsutil.tree_size(upper) if base is None else changes_size(upper, changes_dirs(upper, base))


class Aufs(Storage):
    @contextlib.contextmanager
    def layer_files(self, cache_id: str) -> Iterator[pathlib.Path]:
        yield self._dir("diff", cache_id)

    def write_changes(self, mount_id: str, base_id: str | None, out: BinaryIO) -> None:
        tar_directory(self._dir("diff", mount_id), out, whiteouts="aufs")

    def changes_size(self, mount_id: str, base_id: str | None) -> int:
        branch = os.fspath(self._dir("diff", mount_id))
        return fsutil.unique_size(
            st for rel, st in fsutil.walk_tree(branch) if not rel.split("/", 1)[0].startswith(META_PREFIX)
        )


def open_storage(root: DockerRoot, pool: PoolDevices | None = None) -> Storage:
    """The reader of the data root's driver storage (`pool`: a devicemapper pool's devices)."""
    if root.driver == "devicemapper":
        from cowstore.dockerroot.devmapper import DeviceMapper

        return DeviceMapper(root, pool)
    if pool is not None:
        raise InvalidArgument(f"pool devices are for a devicemapper data root, not for {root.driver}")
    readers: dict[str, type[Storage]] = {"vfs": Vfs, "btrfs": Btrfs, "overlay2": Overlay2, "overlay": Overlay}
    return readers.get(root.driver, Aufs)(root)
