"""What the experiments measure: a cowstore driver, a peer engine, a plain directory, or a baseline.

Most experiments speak only the small container API of :class:`Subject` (import an
image or stack a layer, create, mount, change, commit), so the same code measures
cowstore drivers, the peers (`cowstore.app.bench.peers`) and the baselines that stand
in for a driver (`cowstore.app.bench.baselines`). :class:`PlainSubject` is a plain
directory, written to directly: :class:`NativeSubject`, the no-copy-on-write baseline
on the common backing, is one.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from cowstore.archive import changes_dirs
from cowstore.containers import init_layer
from cowstore.drivers import Driver, open_driver
from cowstore.host import fsutil
from cowstore.host.fsutil import syncfs
from cowstore.layers import LayerStore

# Options that let a driver run inside the scratch space whatever the backing is.
DRIVER_OPTIONS: dict[str, dict[str, str]] = {
    "btrfs": {"btrfs.loopback": "6G"},
    "devicemapper": {"dm.basesize": "4G", "dm.loopdatasize": "20G"},
}


@dataclass(frozen=True)
class Usage:
    """Bytes and inodes in use on the filesystems a subject writes to."""

    bytes: int
    inodes: int | None

    def __sub__(self, other: Usage) -> Usage:
        inodes = None if self.inodes is None or other.inodes is None else self.inodes - other.inodes
        return Usage(self.bytes - other.bytes, inodes)


def fs_usage(path: pathlib.Path) -> Usage:
    """statvfs of the filesystem holding `path`, flushed first so delayed writes count."""
    syncfs(path)
    st = os.statvfs(path)
    inodes = st.f_files - st.f_ffree if st.f_files else None
    return Usage((st.f_blocks - st.f_bfree) * st.f_frsize, inodes)


def _files_usage(directory: pathlib.Path, skip: set[str]) -> int:
    total = 0
    for entry in os.scandir(directory):
        if entry.name not in skip and entry.is_file(follow_symlinks=False):
            total += entry.stat(follow_symlinks=False).st_blocks * 512
    return total


def docker_like_init(root: pathlib.Path) -> None:
    """What Docker's `-init` layer holds: mount targets and the files the engine bind-mounts."""
    for directory in ("dev/pts", "dev/shm", "proc", "sys", "etc"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    for name in ("etc/resolv.conf", "etc/hosts", "etc/hostname", ".dockerenv", "dev/console"):
        (root / name).touch()


class Subject:
    """One thing measured side by side with the others."""

    name: str
    # "driver", "peer", "native", "baseline" (the reference for a driver, see baselines.py) or
    # "snapshotter" (a containerd snapshotter, only inside experiments/containerd_run.py)
    kind: str
    # False for an engine that mounts a container only while it runs (docker): experiments
    # then change files with `run` instead of through a mount point.
    mountable: bool = True

    def load_image(self, tar: pathlib.Path) -> str:
        raise NotImplementedError

    def load_layer(self, stream: BinaryIO, parent: str | None) -> str:
        """Stack one layer tar on `parent` (None: a base layer); drop it with drop_image."""
        raise NotImplementedError

    def drop_image(self, image: str) -> None:
        raise NotImplementedError

    def create(self, image: str, name: str, *, init: bool = True) -> str:
        """A container of `image`; with `init`, under an `-init` layer as Docker makes one (where it can)."""
        raise NotImplementedError

    def mount(self, container: str) -> pathlib.Path:
        raise NotImplementedError

    def unmount(self, container: str) -> None:
        raise NotImplementedError

    def run(self, image: str, argv: Sequence[str], name: str | None = None) -> str:
        """Run `argv` in a new container to completion and return its output (non-mountable engines)."""
        raise NotImplementedError

    def remove(self, container: str) -> None:
        raise NotImplementedError

    def changes(self, container: str) -> int:
        """Number of changed paths (what `diff` prints)."""
        raise NotImplementedError

    def commit(self, container: str) -> str:
        raise NotImplementedError

    def drop_commit(self, image: str) -> None:
        raise NotImplementedError

    def usage(self) -> Usage:
        raise NotImplementedError

    def storage_dir(self) -> pathlib.Path:
        """The directory holding every file of the subject, backing files included: evicting
        the page cache of everything below it makes the next read cold."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        """Release everything the subject holds; the scratch dir is deleted afterwards."""


class DriverSubject(Subject):
    """A cowstore driver with its own layer store in `root`."""

    kind = "driver"

    def __init__(self, driver: str, root: pathlib.Path, *, name: str | None = None) -> None:
        self.name = name or driver
        self.driver_name = driver
        self.root = root
        self._open()

    def _open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.driver: Driver = open_driver(
            self.driver_name, self.root / self.driver_name, DRIVER_OPTIONS.get(self.driver_name, {})
        )
        try:
            self.store = LayerStore(self.root, self.driver)
        except BaseException:
            self.driver.cleanup()
            raise
        self._closed = False

    def _close_store(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.store.close()
        finally:
            self.driver.cleanup()

    def reopen(self) -> None:
        """Close the store and the driver, then open both on the same root: a daemon restart.
        Unmount the subject's containers first."""
        self._close_store()
        self._open()

    def describe(self) -> str:
        return f"cowstore {self.driver_name} driver, home on {fsutil.backing_fs(self.driver.home)}"

    def load_image(self, tar: pathlib.Path) -> str:
        with open(tar, "rb") as stream:
            return self.load_layer(stream, None)

    def load_layer(self, stream: BinaryIO, parent: str | None) -> str:
        return self.store.register(stream, parent).chain_id

    def drop_image(self, image: str) -> None:
        self.store.release(image)

    def create(self, image: str, name: str, *, init: bool = True) -> str:
        self.store.create_rw(name, image, init=init_layer if init else None)
        return name

    def mount(self, container: str) -> pathlib.Path:
        return self.store.mount(container)

    def unmount(self, container: str) -> None:
        self.store.unmount(container)

    def remove(self, container: str) -> None:
        self.store.remove_rw(container, force=True)

    def changes(self, container: str) -> int:
        return len(self.store.rw_changes(container))

    def naive_changes(self, container: str) -> int:
        """The changes found by comparing the mounted container with its mounted parent tree:
        what a driver without a native diff does, and the baseline a native diff must beat."""
        rw = self.store.get_rw(container)
        parent = rw.init_id or (self.store.get(rw.parent).cache_id if rw.parent else None)
        root = self.store.mount(container)
        try:
            if parent is None:
                return len(changes_dirs(root, None))
            try:
                return len(changes_dirs(root, self.driver.get(parent)))
            finally:
                self.driver.put(parent)
        finally:
            self.store.unmount(container)

    def commit(self, container: str) -> str:
        rw = self.store.get_rw(container)
        stream = self.store.rw_diff(container)
        try:
            return self.store.register(stream, rw.parent).chain_id
        finally:
            stream.close()

    def drop_commit(self, image: str) -> None:
        self.store.release(image)

    def usage(self) -> Usage:
        """Used space where the layers live; a driver on its own filesystem (a loop-mounted
        btrfs) counts that filesystem plus the store's own files, not the image file growth.
        The database's write-ahead log is emptied first: a journal of bounded size, not
        what the rows take."""
        self.store.db.checkpoint()
        home = fs_usage(self.driver.home)
        if os.stat(self.driver.home).st_dev == os.stat(self.root).st_dev:
            return home
        skip = {self.driver.home.name, f"{self.driver.home.name}.img"}
        return Usage(home.bytes + _files_usage(self.root, skip), home.inodes)

    def storage_dir(self) -> pathlib.Path:
        return self.root

    def close(self) -> None:
        self._close_store()


class PlainSubject(Subject):
    """A plain directory, no copy-on-write: experiments write their files into `dir` directly."""

    dir: pathlib.Path

    def storage_dir(self) -> pathlib.Path:
        return self.dir

    def usage(self) -> Usage:
        return fs_usage(self.dir)


class NativeSubject(PlainSubject):
    """The baseline of every driver: a plain directory on the common backing."""

    kind = "native"

    def __init__(self, directory: pathlib.Path) -> None:
        self.name = "native"
        self.dir = directory

    def describe(self) -> str:
        return f"native (plain directory on {fsutil.backing_fs(self.dir)})"
