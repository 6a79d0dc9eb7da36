"""What a tree really occupies on disk: allocated blocks, each inode or extent counted once.

`docker system df` adds up apparent sizes per image and per container, and so counts
a layer shared by two images twice, a hard link twice, a sparse file at its length.
Here every count is of allocated blocks (st_blocks), and a caller walking several
trees passes one `seen` set, so what an earlier tree holds (a parent layer's hard
links) is not counted again for a later one. Snapshots share extents, not inodes:
`Extents` counts those by their physical address (FIEMAP).

Walks use directory descriptors, never follow symlinks, and stay on the filesystem
they start on: the mounts below a driver's home (merged views, FUSE mounts, the
filesystems of thin devices) are not its storage.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
from collections.abc import Iterator

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNKNOWN = 0x2
FIEMAP_EXTENT_DATA_INLINE = 0x200
_FIEMAP_HEADER = struct.Struct("=QQIIII")
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")
_EXTENTS_PER_CALL = 256
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def walk(path: str | os.PathLike) -> Iterator[tuple[int, str, os.stat_result]]:
    """(parent directory fd, name, lstat) of `path` itself and everything below it.

    Only what lies on the filesystem of `path` (mount points below are skipped); the
    fd is valid until the next item. Entries that vanish meanwhile are skipped.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path)) or "/"
    name = os.path.basename(os.path.abspath(path)) or "."
    try:
        parent_fd = os.open(parent, _DIR_FLAGS)
    except OSError:
        return
    stack: list[tuple[int, Iterator[os.DirEntry[str]] | None]] = [(parent_fd, None)]
    try:
        try:
            top = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except OSError:
            return
        device = top.st_dev
        yield parent_fd, name, top
        if stat.S_ISDIR(top.st_mode):
            _descend(stack, parent_fd, name)
        while len(stack) > 1:
            fd, entries = stack[-1]
            entry = next(entries, None) if entries is not None else None
            if entry is None:
                stack.pop()
                os.close(fd)
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:  # gone, or a dead FUSE mount (ENOTCONN)
                continue
            if st.st_dev != device:
                continue
            yield fd, entry.name, st
            if stat.S_ISDIR(st.st_mode):
                _descend(stack, fd, entry.name)
    finally:
        for fd, _ in stack:
            os.close(fd)


def _descend(stack: list[tuple[int, Iterator[os.DirEntry[str]] | None]], parent_fd: int, name: str) -> None:
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError:
        return
    try:
        entries = list(os.scandir(fd))
    except OSError:
        os.close(fd)
        return
    stack.append((fd, iter(entries)))


def allocated(path: str | os.PathLike, seen: set[tuple[int, int]]) -> int:
    """Bytes allocated to `path` and the inodes below it that are not in `seen` (added to it)."""
    total = 0
    for _, _, st in walk(path):
        key = (st.st_dev, st.st_ino)
        if key not in seen:
            seen.add(key)
            total += st.st_blocks * 512
    return total


def extents(fd: int) -> Iterator[tuple[int, int, int]]:
    """(physical offset, length, flags) of every extent of the open file `fd` (FIEMAP)."""
    start = 0
    while True:
        request = bytearray(_FIEMAP_HEADER.size + _EXTENTS_PER_CALL * _FIEMAP_EXTENT.size)
        _FIEMAP_HEADER.pack_into(request, 0, start, 2**64 - 1 - start, FIEMAP_FLAG_SYNC, 0, _EXTENTS_PER_CALL, 0)
        try:
            fcntl.ioctl(fd, FS_IOC_FIEMAP, request, True)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
                return
            raise
        mapped = _FIEMAP_HEADER.unpack_from(request)[3]
        if mapped == 0:
            return
        for index in range(mapped):
            logical, physical, length, _, _, flags, *_ = _FIEMAP_EXTENT.unpack_from(
                request, _FIEMAP_HEADER.size + index * _FIEMAP_EXTENT.size
            )
            yield physical, length, flags
            start = logical + length
            if flags & FIEMAP_EXTENT_LAST:
                return


class Extents:
    """Data extents already counted, by physical offset, across the trees of one walk."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, int]] = set()
        self.inodes: set[tuple[int, int]] = set()

    def data_bytes(self, path: str | os.PathLike) -> int:
        """Bytes of the data extents of the files below `path` that no earlier call counted.

        Inline data (small files kept in the metadata) and extents not yet allocated
        are the filesystem's metadata, not counted here.
        """
        total = 0
        for dir_fd, name, st in walk(path):
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in self.inodes:
                continue
            self.inodes.add((st.st_dev, st.st_ino))
            with contextlib.suppress(OSError):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                try:
                    for physical, length, flags in extents(fd):
                        if flags & (FIEMAP_EXTENT_DATA_INLINE | FIEMAP_EXTENT_UNKNOWN):
                            continue
                        if (physical, length) not in self.seen:
                            self.seen.add((physical, length))
                            total += length
                finally:
                    os.close(fd)
        return total
