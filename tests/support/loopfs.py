"""The tests' small filesystems of their own: a sparse image, formatted, on a loop device, mounted.

A store root on one of these can be filled to the last block, and its `statvfs` is the
filesystem's own count of what the store used, shared with nothing else.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterator, Sequence

import pytest

from cowstore.app.bench.loopfs import EXT4, LoopFilesystem
from cowstore.errors import NotSupported
from cowstore.host import loop, mounts, service


@contextlib.contextmanager
def loop_filesystem(directory: pathlib.Path, size: int, mkfs: Sequence[str] = EXT4) -> Iterator[pathlib.Path]:
    """A new filesystem of `size` bytes mounted at `directory/fs`; everything under it is undone after."""
    try:
        fs = LoopFilesystem(directory / "fs.img", directory / "fs", size, mkfs)
    except NotSupported as exc:
        pytest.skip(str(exc))
    try:
        yield fs.mountpoint
    finally:
        for pid in service.servers_below(fs.mountpoint):
            service.terminate(pid)
        top = os.path.realpath(fs.mountpoint)
        for point in mounts.mounts_under(fs.mountpoint):
            if point != top:
                mounts.umount(point)
        for device in loop.attached_below(fs.mountpoint):
            loop.detach_device(device)
        fs.close()


def used_bytes(path: pathlib.Path) -> int:
    """Bytes in use on the filesystem of `path`, by its own count."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize
