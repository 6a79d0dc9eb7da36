"""Fixtures that mount a union over temporary branches and always tear it down."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
from typing import Any

import pytest

from cowstore.drivers.aufs.unionfs.client import UnionClient
from cowstore.host import mounts
from cowstore.host.service import ServiceUnavailable


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

    def __init__(self, server: UnionClient, root: pathlib.Path, layers: int, passthrough: bool) -> None:
        self.server = server
        self.root = root
        self.mnt = root / "mnt"
        self.branches = [root / f"b{i}" for i in range(layers)]
        self.passthrough = passthrough
        self.info: dict[str, Any] | None = None
        self.mnt.mkdir(parents=True)
        for path in self.branches:
            path.mkdir()

    def mount(self) -> None:
        specs = [f"{self.branches[0]}=rw"] + [f"{b}=ro+wh" for b in self.branches[1:]]
        self.info = self.server.mount(self.mnt, specs, timeout=10.0, passthrough=self.passthrough, source="unionfs")

    def unmount(self) -> None:
        self.server.unmount(self.mnt)

    def remount(self) -> None:
        self.unmount()
        self.mount()


@pytest.fixture(scope="session")
def union_server(tmp_path_factory):
    """One union server for every union of the run, as a driver home has; always stopped."""
    reason = _fuse_available()
    if reason:
        pytest.skip(reason)
    server = UnionClient(tmp_path_factory.mktemp("unionserver"))
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            with contextlib.suppress(ServiceUnavailable, ProcessLookupError):  # a server that would not stop
                os.kill(server.client.call("pid"), signal.SIGKILL)


@pytest.fixture(params=["passthrough", "python-data"])
def union_factory(request, tmp_path, union_server):
    """Make unions (mounted by the caller); every one is unmounted again."""
    made: list[Union] = []

    def make(layers: int = 3) -> Union:
        union = Union(union_server, tmp_path / f"u{len(made)}", layers, request.param == "passthrough")
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


def copy_view(src: pathlib.Path, dst: pathlib.Path) -> None:
    """A plain-directory copy of a tree with all metadata (the reference for comparisons)."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    subprocess.run(["cp", "-a", "--", f"{src}/.", str(dst)], check=True)
