"""What a FUSE filesystem implements: the `Operations` interface and its value types.

`Session` decodes each kernel request into a call of one of these methods and encodes
what it returns; a filesystem overrides the ones it supports.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from cowstore.host.fuse.session import Session


class Context(NamedTuple):
    """Who made the request (fsuid/fsgid/pid of the calling thread).

    A NamedTuple, not a frozen dataclass: one is built for every request, and building
    a NamedTuple costs half as much.
    """

    uid: int
    gid: int
    pid: int


@dataclass
class Entry:
    """A LOOKUP-style answer: node id plus attributes and how long the kernel may cache them."""

    nodeid: int
    attr: os.stat_result
    entry_timeout: float
    attr_timeout: float


@dataclass
class Opened:
    """An OPEN/CREATE answer: the handle and, for passthrough, the backing id."""

    fh: int
    flags: int = 0
    backing_id: int = 0


@dataclass
class SetAttr:
    """The decoded fields of a SETATTR request; None means "leave unchanged".

    `kill_suidgid` asks for what the VFS does when a caller without CAP_FSETID writes,
    truncates or chowns: drop S_ISUID, and S_ISGID if the file is group-executable or
    the caller is not in its group.
    It also arrives alone, for the KILL_SUIDGID flag of an OPEN or WRITE request.
    """

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    atime_now: bool = False
    mtime_now: bool = False
    fh: int | None = None
    kill_suidgid: bool = False


class Operations:
    """Handler interface; every method not overridden answers ENOSYS."""

    def init(self, session: Session) -> None:
        """Called once INIT is negotiated (session.passthrough is then known)."""

    def lookup(self, ctx: Context, parent: int, name: bytes) -> Entry:
        raise OSError(errno.ENOSYS, "lookup")

    def forget(self, items: Iterable[tuple[int, int]]) -> None:
        """Drop kernel references: (nodeid, count) pairs; no reply is sent."""

    def getattr(self, ctx: Context, node: int, fh: int | None) -> tuple[os.stat_result, float]:
        raise OSError(errno.ENOSYS, "getattr")

    def setattr(self, ctx: Context, node: int, change: SetAttr) -> tuple[os.stat_result, float]:
        raise OSError(errno.ENOSYS, "setattr")

    def readlink(self, ctx: Context, node: int) -> bytes:
        raise OSError(errno.ENOSYS, "readlink")

    def symlink(self, ctx: Context, parent: int, name: bytes, target: bytes) -> Entry:
        raise OSError(errno.ENOSYS, "symlink")

    def mknod(self, ctx: Context, parent: int, name: bytes, mode: int, rdev: int) -> Entry:
        raise OSError(errno.ENOSYS, "mknod")

    def mkdir(self, ctx: Context, parent: int, name: bytes, mode: int) -> Entry:
        raise OSError(errno.ENOSYS, "mkdir")

    def unlink(self, ctx: Context, parent: int, name: bytes) -> None:
        raise OSError(errno.ENOSYS, "unlink")

    def rmdir(self, ctx: Context, parent: int, name: bytes) -> None:
        raise OSError(errno.ENOSYS, "rmdir")

    def rename(self, ctx: Context, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int) -> None:
        raise OSError(errno.ENOSYS, "rename")

    def link(self, ctx: Context, node: int, new_parent: int, new_name: bytes) -> Entry:
        raise OSError(errno.ENOSYS, "link")

    def open(self, ctx: Context, node: int, flags: int) -> Opened:
        raise OSError(errno.ENOSYS, "open")

    def create(self, ctx: Context, parent: int, name: bytes, mode: int, flags: int) -> tuple[Entry, Opened]:
        raise OSError(errno.ENOSYS, "create")

    def read(self, ctx: Context, node: int, fh: int, offset: int, size: int) -> bytes:
        raise OSError(errno.ENOSYS, "read")

    def read_into(self, ctx: Context, node: int, fh: int, offset: int, buf: memoryview) -> int | bytes:
        """Answer a READ of len(buf) bytes: fill `buf` and return how many bytes hold data.

        `buf` is page-aligned and belongs to the serving thread, and the reply is sent
        straight from it, so data can land there by O_DIRECT with no copy in Python.
        A filesystem whose data come as bytes anyway may return them instead; that is
        what this default does, through `read`.
        """
        return self.read(ctx, node, fh, offset, len(buf))

    def write(self, ctx: Context, node: int, fh: int, offset: int, data: memoryview) -> int:
        """Write `data`, which starts on a page boundary and is valid during this call only."""
        raise OSError(errno.ENOSYS, "write")

    def statfs(self, ctx: Context, node: int) -> os.statvfs_result:
        raise OSError(errno.ENOSYS, "statfs")

    def release(self, ctx: Context, node: int, fh: int) -> None:
        """Last close of an open file."""

    def flush(self, ctx: Context, node: int, fh: int) -> None:
        """close(2) of one descriptor."""

    def fsync(self, ctx: Context, node: int, fh: int, datasync: bool) -> None:
        """fsync/fdatasync."""

    def setxattr(self, ctx: Context, node: int, name: bytes, value: bytes, flags: int) -> None:
        raise OSError(errno.ENOSYS, "setxattr")

    def getxattr(self, ctx: Context, node: int, name: bytes) -> bytes:
        raise OSError(errno.ENOSYS, "getxattr")

    def listxattr(self, ctx: Context, node: int) -> list[bytes]:
        raise OSError(errno.ENOSYS, "listxattr")

    def removexattr(self, ctx: Context, node: int, name: bytes) -> None:
        raise OSError(errno.ENOSYS, "removexattr")

    def opendir(self, ctx: Context, node: int, flags: int) -> int:
        return 0

    def readdir(self, ctx: Context, node: int, fh: int, offset: int) -> Iterable[tuple[bytes, int, int, int]]:
        """Yield (name, ino, d_type, next offset) starting after `offset`."""
        raise OSError(errno.ENOSYS, "readdir")

    def releasedir(self, ctx: Context, node: int, fh: int) -> None:
        """closedir."""

    def fallocate(self, ctx: Context, node: int, fh: int, offset: int, length: int, mode: int) -> None:
        raise OSError(errno.ENOSYS, "fallocate")

    def lseek(self, ctx: Context, node: int, fh: int, offset: int, whence: int) -> int:
        raise OSError(errno.ENOSYS, "lseek")
