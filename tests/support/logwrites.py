"""Power loss in userspace, after xfstests' log-writes method.

A disk image is served as the one file of a FUSE mount of our own, and a direct-I/O
loop device turns it into the block device a filesystem is made on. Every WRITE,
discard and FSYNC (the loop device turns a FLUSH or FUA into fsync) that reaches the
image is applied and appended to a log, in the order the server saw them. `replay`
then rebuilds the image from the copy taken before recording, one record at a time,
and hands over the state at each flush: what a disk holds after power fails right
after that flush (everything before it written, nothing after).
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import pathlib
import shutil
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Iterator

from cowstore.host import fuse, loop, mounts
from cowstore.host.fsutil import FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, punch_hole
from cowstore.host.fuse import protocol as proto

_ROOT = 1
_FILE = 2
_NAME = b"disk"
_HEADER = struct.Struct("<cQQ")  # kind, offset, length (then `length` bytes for a write)
WRITE, DISCARD, FLUSH = b"W", b"D", b"F"


class _LoggingDisk(fuse.Operations):
    """A directory holding one file, `disk`: the image, with every change logged."""

    def __init__(self, image: pathlib.Path, log: pathlib.Path) -> None:
        self.fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
        self.log = open(log, "ab", buffering=0)  # noqa: SIM115 - open for the server's life
        self.lock = threading.Lock()

    def _record(self, kind: bytes, offset: int, length: int, data: bytes = b"") -> None:
        with self.lock:
            self.log.write(_HEADER.pack(kind, offset, length) + data)

    def _stat(self, node: int) -> os.stat_result:
        mode, size = (stat.S_IFDIR | 0o700, 0) if node == _ROOT else (stat.S_IFREG | 0o600, os.fstat(self.fd).st_size)
        extra = {"st_atime_ns": 0, "st_mtime_ns": 0, "st_ctime_ns": 0, "st_blksize": 0, "st_blocks": 0, "st_rdev": 0}
        return os.stat_result((mode, node, 0, 1, 0, 0, size, 0, 0, 0), extra)

    def lookup(self, ctx: fuse.Context, parent: int, name: bytes) -> fuse.Entry:
        if parent != _ROOT or name != _NAME:
            raise OSError(errno.ENOENT, "no such file")
        return fuse.Entry(_FILE, self._stat(_FILE), entry_timeout=0.0, attr_timeout=0.0)

    def getattr(self, ctx: fuse.Context, node: int, fh: int | None) -> tuple[os.stat_result, float]:
        return self._stat(node), 0.0

    def setattr(self, ctx: fuse.Context, node: int, change: fuse.SetAttr) -> tuple[os.stat_result, float]:
        return self._stat(node), 0.0

    def open(self, ctx: fuse.Context, node: int, flags: int) -> fuse.Opened:
        return fuse.Opened(0)

    def read(self, ctx: fuse.Context, node: int, fh: int, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def write(self, ctx: fuse.Context, node: int, fh: int, offset: int, data: memoryview) -> int:
        written = os.pwrite(self.fd, data, offset)
        self._record(WRITE, offset, written, bytes(data[:written]))
        return written

    def fallocate(self, ctx: fuse.Context, node: int, fh: int, offset: int, length: int, mode: int) -> None:
        if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            punch_hole(self.fd, offset, length)
            self._record(DISCARD, offset, length)

    def fsync(self, ctx: fuse.Context, node: int, fh: int, datasync: bool) -> None:
        os.fsync(self.fd)
        self._record(FLUSH, 0, 0)

    def statfs(self, ctx: fuse.Context, node: int) -> os.statvfs_result:
        return os.statvfs_result((4096, 4096, 0, 0, 0, 0, 0, 0, 0, 255))

    def readdir(self, ctx: fuse.Context, node: int, fh: int, offset: int) -> Iterator[tuple[bytes, int, int, int]]:
        entries = [(b".", _ROOT, stat.S_IFDIR), (b"..", _ROOT, stat.S_IFDIR), (_NAME, _FILE, stat.S_IFREG)]
        for index in range(offset, len(entries)):
            name, ino, mode = entries[index]
            yield name, ino, proto.dirent_type(mode), index + 1


def _serve(image: pathlib.Path, log: pathlib.Path, mountpoint: pathlib.Path) -> None:
    fd = fuse.open_device()
    try:
        fuse.mount_fd(fd, mountpoint, fstype="cowstore-logwrites", source="logwrites")
        try:
            session = fuse.Session(_LoggingDisk(image, log), fd, want_passthrough=False, async_dio=True)
            session.handshake()
            session.serve(threads=1)  # one thread: the log holds requests in the order they were served
        finally:
            with contextlib.suppress(OSError):
                fuse.unmount(mountpoint)
    finally:
        os.close(fd)


class Recorder:
    """A filesystem made by `mkfs` on a logged disk of `size` bytes, in `work`."""

    def __init__(self, work: pathlib.Path, size: int, mkfs: tuple[str, ...]) -> None:
        self.work = work
        self.image = work / "disk.img"
        self.initial = work / "initial.img"
        self.log = work / "writes.log"
        self.served = work / "served"
        self.mountpoint = work / "fs"
        with open(self.image, "wb") as fh:
            fh.truncate(size)
        subprocess.run([*mkfs, str(self.image)], check=True, capture_output=True)
        shutil.copyfile(self.image, self.initial)
        self.log.write_bytes(b"")

    def position(self) -> int:
        """How many bytes of log there are now: a point in the recording."""
        return self.log.stat().st_size

    @contextlib.contextmanager
    def mounted(self, fstype: str) -> Iterator[pathlib.Path]:
        """The filesystem mounted at `mountpoint` while everything that reaches its disk is logged."""
        self.served.mkdir(exist_ok=True)
        self.mountpoint.mkdir(exist_ok=True)
        server = multiprocessing.get_context("fork").Process(
            target=_serve, args=(self.image, self.log, self.served), daemon=True
        )
        server.start()
        try:
            deadline = time.monotonic() + 10
            while not (self.served / _NAME.decode()).exists():
                assert server.is_alive() and time.monotonic() < deadline, "the logging server did not start"
                time.sleep(0.05)
            with loop.attached(self.served / _NAME.decode(), direct_io=True) as device:
                mounts.mount(device, self.mountpoint, fstype)
            try:
                yield self.mountpoint
            finally:
                mounts.umount(self.mountpoint)
        finally:
            loop.detach(self.served / _NAME.decode())
            with contextlib.suppress(OSError):
                fuse.unmount(self.served)
            server.join(timeout=10)
            if server.is_alive():
                server.kill()
                server.join()


def flushes(recorder: Recorder) -> int:
    """How many flushes the log holds."""
    count = 0
    with open(recorder.log, "rb") as log:
        while header := log.read(_HEADER.size):
            kind, _, length = _HEADER.unpack(header)
            if kind == WRITE:
                log.seek(length, os.SEEK_CUR)
            count += kind == FLUSH
    return count


def replay(recorder: Recorder, chosen: set[int]) -> Iterator[tuple[int, pathlib.Path]]:
    """(log position, image) of the disk as it stood after each flush whose index is in `chosen`.

    The image is rebuilt from the initial copy by applying the log in order; each state
    is handed over as a copy of its own, which the caller may mount and change.
    """
    state = recorder.work / "replay.img"
    current = recorder.work / "replaying.img"
    shutil.copyfile(recorder.initial, current)
    fd = os.open(current, os.O_RDWR | os.O_CLOEXEC)
    index = 0
    try:
        with open(recorder.log, "rb") as log:
            while header := log.read(_HEADER.size):
                kind, offset, length = _HEADER.unpack(header)
                if kind == WRITE:
                    os.pwrite(fd, log.read(length), offset)
                elif kind == DISCARD:
                    punch_hole(fd, offset, length)
                elif kind == FLUSH:
                    if index in chosen:
                        subprocess.run(["cp", "--sparse=always", str(current), str(state)], check=True)
                        yield log.tell(), state
                    index += 1
    finally:
        os.close(fd)
        current.unlink(missing_ok=True)
        state.unlink(missing_ok=True)
