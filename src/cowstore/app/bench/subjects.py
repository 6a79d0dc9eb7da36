"""What the experiments measure: a cowstore driver, a peer engine, or a plain directory.

Experiments 1, 2, 6 and 9 speak only the small container API of :class:`Subject`
(import an image, create, mount, change, commit), so the same code measures cowstore
drivers and the peers (`cowstore.bench.peers`). The other experiments need the layer
store or the driver itself and run on :class:`DriverSubject` only; :class:`NativeSubject`
is the no-copy-on-write baseline: a plain directory on the same backing filesystem.
"""

from __future__ import annotations

import abc
import os
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass

from cowstore.app.bench.scratch import Scratch
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


class Subject(abc.ABC):
    """One thing measured side by side with the others."""

    name: str
    kind: str  # "driver", "peer" or "native"
    # False for an engine that mounts a container only while it runs (docker): experiments
    # then change files with `run` instead of through a mount point.
    mountable: bool = True

    def load_image(self, tar: pathlib.Path) -> str:
        raise NotImplementedError

    def drop_image(self, image: str) -> None:
        raise NotImplementedError

    def create(self, image: str, name: str) -> str:
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

    def plain_dir(self) -> pathlib.Path:
        """A directory without copy-on-write on the subject's backing (native only)."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        """Release everything the subject holds; the scratch dir is deleted afterwards."""


class DriverSubject(Subject):
    """A cowstore driver with its own layer store in the scratch space."""

    kind = "driver"

    def __init__(self, name: str, scratch: Scratch, options: dict[str, str] | None = None) -> None:
        self.name = name
        self.root = scratch.path(f"store-{name}")
        self.driver: Driver = open_driver(name, self.root / name, DRIVER_OPTIONS.get(name, {}) | (options or {}))
        try:
            self.store = LayerStore(self.root, self.driver)
        except BaseException:
            self.driver.cleanup()
            raise

    def describe(self) -> str:
        return f"cowstore {self.name} driver, home on {fsutil.backing_fs(self.driver.home)}"

    def load_image(self, tar: pathlib.Path) -> str:
        with open(tar, "rb") as stream:
            return self.store.register(stream, None).chain_id

    def drop_image(self, image: str) -> None:
        self.store.release(image)

    def create(self, image: str, name: str) -> str:
        self.store.create_rw(name, image, init=docker_like_init)
        return name

    def mount(self, container: str) -> pathlib.Path:
        return self.store.mount(container)

    def unmount(self, container: str) -> None:
        self.store.unmount(container)

    def remove(self, container: str) -> None:
        self.store.remove_rw(container, force=True)

    def changes(self, container: str) -> int:
        return len(self.store.rw_changes(container))

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
        btrfs) counts that filesystem plus the store's own files, not the image file growth."""
        home = fs_usage(self.driver.home)
        if os.stat(self.driver.home).st_dev == os.stat(self.root).st_dev:
            return home
        skip = {self.driver.home.name, f"{self.driver.home.name}.img"}
        return Usage(home.bytes + _files_usage(self.root, skip), home.inodes)

    def close(self) -> None:
        try:
            self.store.close()
        finally:
            self.driver.cleanup()


class NativeSubject(Subject):
    """The baseline: a plain directory on the common backing, no copy-on-write at all."""

    kind = "native"

    def __init__(self, scratch: Scratch) -> None:
        self.name = "native"
        self.dir = scratch.path("native")

    def describe(self) -> str:
        return f"native (plain directory on {fsutil.backing_fs(self.dir)})"

    def plain_dir(self) -> pathlib.Path:
        return self.dir
