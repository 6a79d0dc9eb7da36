"""The in-house FUSE session serving a small filesystem in this process, in one thread or several."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import pathlib
import stat
import threading
import time
from collections.abc import Iterator

import pytest

from cowstore.host import fuse, mounts
from cowstore.host.fuse import Context, Entry, Opened, Operations
from cowstore.host.fuse import protocol as proto

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="FUSE mounts need root"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
]

ROOT = 1
FILES = 4
SIZE = 3 * mmap.PAGESIZE + 100
_WAIT = 10.0


def _stat(node: int, mode: int, size: int) -> os.stat_result:
    return os.stat_result(
        (mode, node, 0, 1, 0, 0, size, 0, 0, 0),
        {"st_atime_ns": 0, "st_mtime_ns": 0, "st_ctime_ns": 0, "st_blksize": 0, "st_blocks": 0, "st_rdev": 0},
    )


class Files(Operations):
    """A directory of FILES files f0.. of SIZE bytes each; node 2 + i is file i.

    Reads of even files fill the reply buffer, of odd ones return bytes; a read can be
    made to wait at `barrier` until enough reads are being served at once.
    """

    def __init__(self) -> None:
        self.barrier: threading.Barrier | None = None
        self.writes: list[tuple[int, bytes, int]] = []
        self.threads: set[int] = set()
        self.lock = threading.Lock()

    def lookup(self, ctx: Context, parent: int, name: bytes) -> Entry:
        index = int(name[1:]) if name[:1] == b"f" and name[1:].isdigit() else FILES
        if parent != ROOT or index >= FILES:
            raise OSError(errno.ENOENT, "no such file")
        node = 2 + index
        return Entry(node, _stat(node, stat.S_IFREG | 0o600, SIZE), 0.0, 0.0)

    def getattr(self, ctx: Context, node: int, fh: int | None) -> tuple[os.stat_result, float]:
        if node == ROOT:
            return _stat(ROOT, stat.S_IFDIR | 0o700, 0), 0.0
        return _stat(node, stat.S_IFREG | 0o600, SIZE), 0.0

    def open(self, ctx: Context, node: int, flags: int) -> Opened:
        return Opened(node, flags=proto.FOPEN_DIRECT_IO)  # every read and write reaches the server

    def _content(self, node: int, offset: int, size: int) -> bytes:
        data = bytes((node + i) % 251 for i in range(SIZE))
        return data[offset : offset + size]

    def read_into(self, ctx: Context, node: int, fh: int, offset: int, buf: memoryview) -> int | bytes:
        with self.lock:
            self.threads.add(threading.get_ident())
        if self.barrier is not None:
            self.barrier.wait()
        data = self._content(node, offset, len(buf))
        if node % 2:
            return data
        assert ctypes.addressof(ctypes.c_char.from_buffer(buf)) % mmap.PAGESIZE == 0
        buf[: len(data)] = data
        return len(data)

    def write(self, ctx: Context, node: int, fh: int, offset: int, data: memoryview) -> int:
        address = ctypes.addressof(ctypes.c_char.from_buffer(data))
        with self.lock:
            self.writes.append((offset, bytes(data), address % mmap.PAGESIZE))
        return len(data)


@contextlib.contextmanager
def served(tmp_path: pathlib.Path, ops: Files, threads: int) -> Iterator[tuple[pathlib.Path, threading.Thread]]:
    """Mount `ops` at tmp_path/mnt, served by `threads` threads; always unmounted at the end."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fd = fuse.open_device()
    fuse.mount_fd(fd, mnt, fstype="cowstore-test", source="cowstore-test")
    conn = fuse.connection_id(mnt)
    session = fuse.Session(ops, fd, want_passthrough=False)
    ready = threading.Event()

    def run() -> None:
        session.handshake()
        ready.set()
        session.serve(threads=threads)

    server = threading.Thread(target=run, daemon=True)
    server.start()
    try:
        assert ready.wait(_WAIT)
        yield mnt, server
    finally:
        fuse.unmount(mnt)
        server.join(_WAIT)
        if server.is_alive():  # should not happen: make sure nothing stays blocked on the mount
            fuse.abort_connection(conn)
            server.join(_WAIT)
        os.close(fd)


def test_reads_come_from_the_reply_buffer_or_from_bytes(tmp_path):
    with served(tmp_path, Files(), threads=1) as (mnt, _):
        for index in (0, 1):
            data = (mnt / f"f{index}").read_bytes()
            assert data == bytes((2 + index + i) % 251 for i in range(SIZE))
        with open(mnt / "f0", "rb", buffering=0) as fh:
            assert fh.read(SIZE) == Files()._content(2, 0, SIZE)
            assert os.pread(fh.fileno(), 4096, SIZE - 10) == Files()._content(2, SIZE - 10, 10)  # short at the end
            assert os.pread(fh.fileno(), 4096, SIZE) == b""


def test_write_data_arrives_page_aligned(tmp_path):
    ops = Files()
    payload = os.urandom(2 * mmap.PAGESIZE + 7)
    with served(tmp_path, ops, threads=2) as (mnt, _):
        fd = os.open(mnt / "f2", os.O_WRONLY)
        try:
            assert os.pwrite(fd, payload, 512) == len(payload)
        finally:
            os.close(fd)
    assert ops.writes == [(512, payload, 0)]


def test_concurrent_requests_are_answered_by_several_threads(tmp_path):
    """Each read waits until all of them are being served: only several threads can answer them."""
    ops = Files()
    ops.barrier = threading.Barrier(FILES, timeout=_WAIT)
    results: dict[int, bytes | OSError] = {}
    with served(tmp_path, ops, threads=FILES) as (mnt, _):
        fds = [os.open(mnt / f"f{i}", os.O_RDONLY) for i in range(FILES)]
        try:

            def read(index: int) -> None:
                try:
                    results[index] = os.pread(fds[index], SIZE, 0)
                except OSError as exc:
                    results[index] = exc

            readers = [threading.Thread(target=read, args=(i,)) for i in range(FILES)]
            for reader in readers:
                reader.start()
            for reader in readers:
                reader.join(2 * _WAIT)
        finally:
            for fd in fds:
                os.close(fd)
    assert results == {i: ops._content(2 + i, 0, SIZE) for i in range(FILES)}
    assert len(ops.threads) == FILES


def test_unmount_ends_every_serving_thread(tmp_path):
    before = set(threading.enumerate())
    with served(tmp_path, Files(), threads=4) as (mnt, server):
        assert (mnt / "f3").stat().st_size == SIZE
        deadline = time.monotonic() + _WAIT
        while len(set(threading.enumerate()) - before) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(set(threading.enumerate()) - before) == 4  # the serving thread and its 3 helpers
    assert not server.is_alive()
    assert set(threading.enumerate()) - before == set()
    assert not mounts.is_mountpoint(mnt)
