"""Fixtures that mount a union over temporary branches and always tear it down."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess

import pytest

from cowstore.drivers.aufs.unionfs import daemon
from cowstore.host import mounts


def _fuse_available() -> str | None:
    if os.geteuid() != 0:
        return "union mounts need root"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    with open("/proc/filesystems") as fh:
        if "fuse" not in fh.read().split():
            return "the kernel has no FUSE"
    return None


class Union:
    """A running union mount: `mnt`, `branches` (top first) and mount/unmount helpers."""

    def __init__(self, root: pathlib.Path, layers: int, passthrough: bool) -> None:
        self.root = root
        self.mnt = root / "mnt"
        self.branches = [root / f"b{i}" for i in range(layers)]
        self.passthrough = passthrough
        self.state_file = root / "daemon.json"
        self.log_file = root / "daemon.log"
        self.state: daemon.DaemonState | None = None
        self.mnt.mkdir(parents=True)
        for path in self.branches:
            path.mkdir()

    def mount(self) -> None:
        specs = [f"{self.branches[0]}=rw"] + [f"{b}=ro+wh" for b in self.branches[1:]]
        self.state = daemon.start(
            self.mnt, specs, state_file=self.state_file, log_file=self.log_file, passthrough=self.passthrough
        )

    def unmount(self) -> None:
        daemon.stop(self.mnt, self.state_file)

    def remount(self) -> None:
        self.unmount()
        self.mount()


@pytest.fixture(params=["passthrough", "python-data"])
def union_factory(request, tmp_path):
    """Make unions (mounted by the caller); every one is unmounted and its daemon ended."""
    reason = _fuse_available()
    if reason:
        pytest.skip(reason)
    made: list[Union] = []

    def make(layers: int = 3) -> Union:
        union = Union(tmp_path / f"u{len(made)}", layers, request.param == "passthrough")
        made.append(union)
        return union

    try:
        yield make
    finally:
        for union in made:
            try:
                union.unmount()
            finally:
                if mounts.is_mountpoint(union.mnt):
                    mounts.umount(union.mnt, mounts.MNT_DETACH)
                if daemon.alive(union.state):
                    os.kill(union.state.pid, signal.SIGKILL)


def copy_view(src: pathlib.Path, dst: pathlib.Path) -> None:
    """A plain-directory copy of a tree with all metadata (the reference for comparisons)."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    subprocess.run(["cp", "-a", "--", f"{src}/.", str(dst)], check=True)
