"""Baselines: what a driver's figures are compared with in the same run, besides native.

Each stands for one driver and appears only in the experiments that list it
(`Experiment.baselines`), and only when that driver runs:

- `loop-lvm` and `loop-dio` (devicemapper): ext4 on a plain loop device over a sparse
  file, the way Docker's loop-lvm stored a pool: through the page cache (each block
  cached twice, once per file system), or with direct I/O (cached once, as the thin
  devices are);
- `btrfs-plain` (btrfs): a plain directory on a btrfs of its own, so btrfs's own cost
  and that of writing into a snapshot can be told apart;
- `btrfs-cli` (btrfs): containers made by the `btrfs subvolume snapshot` command, what a
  driver that shells out pays, against the driver's ioctls;
- `overlayfs` (overlay2): the kernel's overlayfs mounted by hand with mount(2) on plain
  layer directories, without any driver bookkeeping;
- `overlay2@xfs` and `aufs@xfs` (overlay2, aufs): the drivers themselves with their
  store on an xfs with reflink, where copy-up can share extents instead of copying.

Each has its own filesystem where it needs one, made in the scratch space (so on the
same disk as everything else) and undone by close().
"""

from __future__ import annotations

import itertools
import os
import pathlib
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from cowstore.app.bench.loopfs import BTRFS, EXT4, XFS_REFLINK, LoopFilesystem
from cowstore.app.bench.scratch import Scratch
from cowstore.app.bench.subjects import DriverSubject, PlainSubject, Subject, Usage, docker_like_init, fs_usage
from cowstore.archive import apply_layer
from cowstore.errors import MountError
from cowstore.host import fsutil, mounts

GIB = 1024**3


class LoopSubject(PlainSubject):
    """A plain directory on a filesystem of its own, on a loop device over a sparse file."""

    kind = "baseline"

    def __init__(self, name: str, scratch: Scratch, mkfs: tuple[str, ...], *, direct_io: bool = False) -> None:
        self.name = name
        self.home = scratch.path(name)
        self.filesystem = LoopFilesystem(self.home / "image", self.home / "mnt", 2 * GIB, mkfs, direct_io=direct_io)
        self.dir = self.filesystem.mountpoint

    def describe(self) -> str:
        return f"{self.name}: plain directory on {self.filesystem.describe()}"

    def storage_dir(self) -> pathlib.Path:
        return self.home  # the image file too: its pages are part of a loop device's cache

    def close(self) -> None:
        self.filesystem.close()


class XfsDriverSubject(DriverSubject):
    """A cowstore driver whose store is on an xfs with reflink, on a loop device of its own."""

    kind = "baseline"

    def __init__(self, driver: str, scratch: Scratch) -> None:
        home = scratch.path(f"{driver}-xfs")
        self.filesystem = LoopFilesystem(home / "image", home / "mnt", 4 * GIB, XFS_REFLINK)
        try:
            super().__init__(driver, self.filesystem.mountpoint / "store", name=f"{driver}@xfs")
        except BaseException:
            self.filesystem.close()
            raise

    def describe(self) -> str:
        return f"cowstore {self.driver_name} driver, store on {self.filesystem.describe()} (reflink on)"

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.filesystem.close()


def _btrfs(*args: str) -> None:
    result = subprocess.run(["btrfs", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise MountError(f"btrfs {' '.join(args[:2])} failed: {(result.stderr or result.stdout).strip()}")


class BtrfsCliSubject(Subject):
    """Images as btrfs subvolumes, containers as snapshots made by the `btrfs` command."""

    kind = "baseline"

    def __init__(self, scratch: Scratch) -> None:
        self.name = "btrfs-cli"
        self.home = scratch.path(self.name)
        self.filesystem = LoopFilesystem(self.home / "image", self.home / "mnt", 2 * GIB, BTRFS)
        self.root = self.filesystem.mountpoint
        self._ids = itertools.count()

    def describe(self) -> str:
        return f"btrfs-cli: `btrfs subvolume snapshot` per layer, on {self.filesystem.describe()}"

    def load_image(self, tar: pathlib.Path) -> str:
        image = f"image{next(self._ids)}"
        _btrfs("subvolume", "create", str(self.root / image))
        with open(tar, "rb") as stream:
            apply_layer(stream, self.root / image)
        return image

    def drop_image(self, image: str) -> None:
        _btrfs("subvolume", "delete", str(self.root / image))

    def create(self, image: str, name: str, *, init: bool = True) -> str:
        """One snapshot per layer, as the driver takes them: `-init` first, then the container's."""
        if init:
            _btrfs("subvolume", "snapshot", str(self.root / image), str(self.root / f"{name}-init"))
            docker_like_init(self.root / f"{name}-init")
            image = f"{name}-init"
        _btrfs("subvolume", "snapshot", str(self.root / image), str(self.root / name))
        return name

    def mount(self, container: str) -> pathlib.Path:
        return self.root / container

    def unmount(self, container: str) -> None:
        """A subvolume is always reachable: nothing to undo."""

    def remove(self, container: str) -> None:
        for name in (container, f"{container}-init"):
            if (self.root / name).exists():
                _btrfs("subvolume", "delete", str(self.root / name))

    def usage(self) -> Usage:
        return fs_usage(self.root)

    def storage_dir(self) -> pathlib.Path:
        return self.home

    def close(self) -> None:
        self.filesystem.close()


class KernelOverlaySubject(Subject):
    """Layers as plain directories, containers as overlayfs mounts made with mount(2) alone.

    The lower directories are named by number and passed relative to the layer
    directory, the process's working directory for the call, so that 500 of them fit in
    the one page mount(2) takes for options (the bench runs in one thread, so nothing
    else sees the working directory change).
    """

    kind = "baseline"

    def __init__(self, scratch: Scratch) -> None:
        self.name = "overlayfs"
        self.home = scratch.path(self.name)
        self.layers = self.home / "layers"
        self.layers.mkdir()
        self.parents: dict[str, str | None] = {}
        self.lowers: dict[str, list[str]] = {}
        self.inits: dict[str, str] = {}
        self._ids = itertools.count(1)

    def describe(self) -> str:
        return f"overlayfs: the kernel's overlay mounted with mount(2), no driver, on {fsutil.backing_fs(self.home)}"

    def _new_layer(self, parent: str | None) -> str:
        layer = str(next(self._ids))
        (self.layers / layer).mkdir()
        self.parents[layer] = parent
        return layer

    def load_layer(self, stream: BinaryIO, parent: str | None) -> str:
        layer = self._new_layer(parent)
        apply_layer(stream, self.layers / layer)
        return layer

    def load_image(self, tar: pathlib.Path) -> str:
        with open(tar, "rb") as stream:
            return self.load_layer(stream, None)

    def drop_image(self, image: str) -> None:
        fsutil.remove_tree(self.layers / image)
        del self.parents[image]

    def create(self, image: str, name: str, *, init: bool = True) -> str:
        if init:
            image = self.inits[name] = self._new_layer(image)
            docker_like_init(self.layers / image)
        chain: list[str] = []
        layer: str | None = image
        while layer is not None:
            chain.append(layer)
            layer = self.parents[layer]
        self.lowers[name] = chain
        for part in ("upper", "work", "merged"):
            (self.home / name / part).mkdir(parents=True)
        return name

    def mount(self, container: str) -> pathlib.Path:
        top = self.home / container
        options = f"lowerdir={':'.join(self.lowers[container])},upperdir={top / 'upper'},workdir={top / 'work'}"
        previous = os.getcwd()
        os.chdir(self.layers)
        try:
            mounts.mount("overlay", top / "merged", "overlay", 0, options)
        finally:
            os.chdir(previous)
        return top / "merged"

    def unmount(self, container: str) -> None:
        mounts.umount(self.home / container / "merged", 0)

    def remove(self, container: str) -> None:
        mounts.umount(self.home / container / "merged")
        fsutil.remove_tree(self.home / container)
        del self.lowers[container]
        if container in self.inits:
            self.drop_image(self.inits.pop(container))

    def usage(self) -> Usage:
        return fs_usage(self.home)

    def storage_dir(self) -> pathlib.Path:
        return self.home


@dataclass(frozen=True)
class Baseline:
    """A baseline subject, the driver it is the reference for, and how to open it."""

    name: str
    driver: str
    open: Callable[[Scratch], Subject]


BASELINES = {
    b.name: b
    for b in (
        Baseline("loop-lvm", "devicemapper", lambda scratch: LoopSubject("loop-lvm", scratch, EXT4)),
        Baseline("loop-dio", "devicemapper", lambda scratch: LoopSubject("loop-dio", scratch, EXT4, direct_io=True)),
        Baseline("btrfs-plain", "btrfs", lambda scratch: LoopSubject("btrfs-plain", scratch, BTRFS)),
        Baseline("btrfs-cli", "btrfs", BtrfsCliSubject),
        Baseline("overlayfs", "overlay2", KernelOverlaySubject),
        Baseline("overlay2@xfs", "overlay2", lambda scratch: XfsDriverSubject("overlay2", scratch)),
        Baseline("aufs@xfs", "aufs", lambda scratch: XfsDriverSubject("aufs", scratch)),
    )
}
