"""Helpers the experiments share: timing, unique names, the container life cycle, file I/O
and the page cache."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import pathlib
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self

from cowstore.app.bench.scale import Scale
from cowstore.app.bench.subjects import Subject
from cowstore.host.fsutil import syncfs

MIB = 1024**2
FITRIM = 0xC0185879  # _IOWR('X', 121, struct fstrim_range)
_names = itertools.count()


def unique(prefix: str) -> str:
    """A container or layer name never used before in this process."""
    return f"{prefix}-{os.getpid()}-{next(_names)}"


class Timer:
    """Milliseconds elapsed inside a `with` block."""

    def __enter__(self) -> Self:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ms = (time.perf_counter() - self.start) * 1000


@contextmanager
def container(
    subject: Subject, image: str, prefix: str, *, init: bool = True, mount_timer: Timer | None = None
) -> Iterator[tuple[str, pathlib.Path]]:
    """A created and mounted container, unmounted and removed afterwards; only the mount is
    timed, and only by `mount_timer` when given."""
    name = subject.create(image, unique(prefix), init=init)
    try:
        with mount_timer or Timer():
            root = subject.mount(name)
        try:
            yield name, root
        finally:
            subject.unmount(name)
    finally:
        subject.remove(name)


def write_file(path: pathlib.Path, size: int, block: bytes) -> None:
    """Write `size` bytes in blocks of `block` and fsync: a sequential, durable write."""
    with open(path, "wb") as fh:
        fh.writelines(block for _ in range(size // len(block)))
        fh.flush()
        os.fsync(fh.fileno())


def read_file(path: pathlib.Path) -> None:
    """Read the whole file, unbuffered, in 1 MiB requests."""
    with open(path, "rb", buffering=0) as fh:
        while fh.read(MIB):
            pass


def mb_per_s(size: int, ms: float) -> float:
    return size / 1e6 / (ms / 1000)


def cached_bytes() -> int:
    """`Cached` of /proc/meminfo: the page cache of the whole machine."""
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("Cached:"):
                return int(line.split()[1]) * 1024
    raise OSError("no Cached line in /proc/meminfo")


def _drop_cache(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def evict(*paths: pathlib.Path | None) -> None:
    """Flush then drop the cached pages of each file, and of every regular file below each
    directory, mounts included: the next read of any of them, or of a file inside them,
    comes from the disk."""
    synced: set[int] = set()
    for path in paths:
        if path is None:
            continue
        tree = os.walk(path) if path.is_dir() else [(str(path.parent), [], [path.name])]
        for dirpath, _, filenames in tree:
            with contextlib.suppress(OSError):
                device = os.stat(dirpath).st_dev
                if device not in synced:
                    synced.add(device)
                    syncfs(dirpath)
            for name in filenames:
                _drop_cache(os.path.join(dirpath, name))


def settle(*paths: pathlib.Path | None) -> None:
    """Write back every dirty page of the machine, then evict `paths` (see :func:`evict`):
    what follows is timed on its own data, not on what an earlier step left to flush. Twice:
    the write-back of a loop-backed filesystem dirties its image file on the filesystem below."""
    os.sync()
    os.sync()
    evict(*paths)


def many_files(scale: Scale) -> int:
    """Small files in the image of experiments 6 and 10: a real image's worth unless quick."""
    return scale.pick(500, 10_000)


def fstrim(path: os.PathLike) -> None:
    """Discard the free blocks of the filesystem holding `path` (FITRIM, what `fstrim` does)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, FITRIM, bytearray(struct.pack("QQQ", 0, 2**64 - 1, 0)))
    finally:
        os.close(fd)
