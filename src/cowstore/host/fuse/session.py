"""A FUSE request loop: decode kernel requests, call an Operations object, encode replies.

It is deliberately filesystem-agnostic (a union filesystem and a single-file block
device server can both sit on it). Handlers raise OSError for errors; anything else
becomes EIO and is logged, so one bad request never kills the mount.

The loop is single-threaded: with FUSE_PASSTHROUGH, READ and WRITE never arrive here,
so what is left is metadata, for which one thread under the GIL is as fast as several.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from cowstore.host.fuse import device
from cowstore.host.fuse import protocol as proto

log = logging.getLogger("cowstore.fuse")

MAX_WRITE = 1 << 20
_MAX_PAGES = MAX_WRITE // 4096
_BUFSIZE = MAX_WRITE + 4096


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

    def write(self, ctx: Context, node: int, fh: int, offset: int, data: memoryview) -> int:
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


def _split_names(data: memoryview, count: int) -> list[bytes]:
    """The NUL-terminated strings that follow a request's fixed part."""
    return bytes(data).split(b"\0")[:count]


class Session:
    """One mounted FUSE connection and its request loop."""

    def __init__(self, ops: Operations, fd: int, *, want_passthrough: bool = True) -> None:
        self.ops = ops
        self.fd = fd
        self.want_passthrough = want_passthrough
        self.passthrough = False
        self.proto_minor = 0
        # One reused buffer: allocating 1 MiB per request would dominate small requests.
        self._buffer = bytearray(_BUFSIZE)
        self._view = memoryview(self._buffer)
        self._handlers: dict[int, Callable[[Context, int, memoryview], bytes | None]] = {
            proto.LOOKUP: self._lookup,
            proto.FORGET: self._forget,
            proto.BATCH_FORGET: self._batch_forget,
            proto.GETATTR: self._getattr,
            proto.SETATTR: self._setattr,
            proto.READLINK: lambda c, n, a: self.ops.readlink(c, n),
            proto.SYMLINK: self._symlink,
            proto.MKNOD: self._mknod,
            proto.MKDIR: self._mkdir,
            proto.UNLINK: lambda c, n, a: self._empty(self.ops.unlink(c, n, _split_names(a, 1)[0])),
            proto.RMDIR: lambda c, n, a: self._empty(self.ops.rmdir(c, n, _split_names(a, 1)[0])),
            proto.RENAME: self._rename,
            proto.RENAME2: self._rename2,
            proto.LINK: self._link,
            proto.OPEN: self._open,
            proto.CREATE: self._create,
            proto.READ: self._read,
            proto.WRITE: self._write,
            proto.STATFS: self._statfs,
            proto.RELEASE: self._release,
            proto.FLUSH: self._flush,
            proto.FSYNC: self._fsync,
            proto.SETXATTR: self._setxattr,
            proto.GETXATTR: self._getxattr,
            proto.LISTXATTR: self._listxattr,
            proto.REMOVEXATTR: lambda c, n, a: self._empty(self.ops.removexattr(c, n, _split_names(a, 1)[0])),
            proto.OPENDIR: self._opendir,
            proto.READDIR: self._readdir,
            proto.RELEASEDIR: self._releasedir,
            proto.FSYNCDIR: lambda c, n, a: b"",
            proto.FALLOCATE: self._fallocate,
            proto.LSEEK: self._lseek,
            proto.INTERRUPT: lambda c, n, a: None,
            proto.DESTROY: lambda c, n, a: b"",
        }

    # -- the loop ---------------------------------------------------------------------

    def handshake(self) -> None:
        """Read and answer INIT (the kernel sends it right after mount)."""
        while True:
            request = self._read_request()
            if request is None:
                raise OSError(errno.ENODEV, "FUSE connection closed before INIT")
            opcode, unique, _, _, args = request
            if opcode == proto.INIT:
                self._reply(unique, self._init(args))
                self.ops.init(self)
                return
            self._reply_error(unique, errno.EIO)

    def serve(self) -> None:
        """Answer requests until the filesystem is unmounted (ENODEV on read)."""
        while True:
            request = self._read_request()
            if request is None:
                return
            opcode, unique, nodeid, ctx, args = request
            handler = self._handlers.get(opcode)
            if handler is None:
                self._reply_error(unique, errno.ENOSYS)
                continue
            try:
                payload = handler(ctx, nodeid, args)
            except OSError as exc:
                self._reply_error(unique, exc.errno or errno.EIO)
                continue
            except Exception:
                log.exception("opcode %d on node %d failed", opcode, nodeid)
                self._reply_error(unique, errno.EIO)
                continue
            if payload is not None:
                self._reply(unique, payload)

    def _read_request(self) -> tuple[int, int, int, Context, memoryview] | None:
        while True:
            try:
                size = os.readv(self.fd, [self._buffer])
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOENT:  # the request was interrupted before we read it
                    continue
                if exc.errno == errno.ENODEV:
                    return None
                raise
            length, opcode, unique, nodeid, uid, gid, pid, extlen, _ = proto.IN_HEADER.unpack_from(self._buffer)
            end = min(length, size) - extlen * 8
            view = self._view[proto.IN_HEADER.size : end]
            return opcode, unique, nodeid, Context(uid, gid, pid), view

    def _reply(self, unique: int, payload: bytes | memoryview) -> None:
        header = proto.OUT_HEADER.pack(proto.OUT_HEADER.size + len(payload), 0, unique)
        self._write_reply(header, payload)

    def _reply_error(self, unique: int, err: int) -> None:
        self._write_reply(proto.OUT_HEADER.pack(proto.OUT_HEADER.size, -err, unique), b"")

    def _write_reply(self, header: bytes, payload: bytes | memoryview) -> None:
        try:
            os.writev(self.fd, [header, payload])
        except FileNotFoundError:
            pass  # the request was interrupted and the kernel no longer waits for it

    # -- passthrough helpers for Operations -------------------------------------------

    def backing_open(self, file_fd: int) -> int | None:
        """Register a backing file for passthrough; None when the kernel refuses it."""
        if not self.passthrough:
            return None
        try:
            return device.backing_open(self.fd, file_fd)
        except OSError as exc:
            log.warning("passthrough refused for a file (%s); serving its data in Python", exc.strerror)
            return None

    def backing_close(self, backing_id: int) -> None:
        try:
            device.backing_close(self.fd, backing_id)
        except OSError as exc:
            log.warning("closing backing id %d: %s", backing_id, exc.strerror)

    # -- request decoders ---------------------------------------------------------------

    def _init(self, args: memoryview) -> bytes:
        major, minor, max_readahead, flags, flags2 = proto.INIT_IN.unpack_from(args)
        if major != proto.KERNEL_MAJOR:
            raise OSError(errno.EPROTO, f"unsupported FUSE major version {major}")
        offered = flags | (flags2 << 32) if flags & proto.INIT_EXT else flags
        self.proto_minor = min(minor, proto.KERNEL_MINOR)
        want = (
            proto.ASYNC_READ
            | proto.ATOMIC_O_TRUNC
            | proto.BIG_WRITES
            | proto.AUTO_INVAL_DATA
            | proto.MAX_PAGES
            | proto.CACHE_SYMLINKS
            | proto.INIT_EXT
            | proto.DIRECT_IO_ALLOW_MMAP
            # The server, not the kernel, clears set-id bits on write, truncate and chown
            # (requests carry a KILL_SUIDGID flag, which Session turns into a SetAttr).
            # In return the kernel may mark inodes S_NOSEC and stop asking GETXATTR
            # security.capability before every write, passthrough writes included:
            # without it that round trip costs a third of small-write throughput.
            | proto.HANDLE_KILLPRIV_V2
        )
        if self.want_passthrough:
            want |= proto.PASSTHROUGH
        granted = want & offered
        self.passthrough = bool(granted & proto.PASSTHROUGH)
        log.info("FUSE %d.%d, passthrough %s", major, self.proto_minor, "on" if self.passthrough else "off")
        return proto.INIT_OUT.pack(
            proto.KERNEL_MAJOR,
            self.proto_minor,
            max_readahead,
            granted & 0xFFFFFFFF,
            12,
            9,
            MAX_WRITE,
            1,
            _MAX_PAGES,
            0,
            granted >> 32,
            1 if self.passthrough else 0,
        )

    @staticmethod
    def _empty(_: object) -> bytes:
        return b""

    @staticmethod
    def _entry(entry: Entry) -> bytes:
        esec, ensec = proto.pack_timeout(entry.entry_timeout)
        asec, ansec = proto.pack_timeout(entry.attr_timeout)
        return proto.ENTRY_OUT.pack(entry.nodeid, 0, esec, asec, ensec, ansec) + proto.pack_attr(entry.attr)

    @staticmethod
    def _attr(result: tuple[os.stat_result, float]) -> bytes:
        st, timeout = result
        sec, nsec = proto.pack_timeout(timeout)
        return proto.ATTR_OUT.pack(sec, nsec, 0) + proto.pack_attr(st)

    def _lookup(self, ctx: Context, node: int, args: memoryview) -> bytes:
        return self._entry(self.ops.lookup(ctx, node, _split_names(args, 1)[0]))

    def _forget(self, ctx: Context, node: int, args: memoryview) -> None:
        (count,) = proto.FORGET_IN.unpack_from(args)
        self.ops.forget([(node, count)])

    def _batch_forget(self, ctx: Context, node: int, args: memoryview) -> None:
        (count, _) = proto.BATCH_FORGET_IN.unpack_from(args)
        base = proto.BATCH_FORGET_IN.size
        items = [proto.FORGET_ONE.unpack_from(args, base + i * proto.FORGET_ONE.size) for i in range(count)]
        self.ops.forget(items)

    def _getattr(self, ctx: Context, node: int, args: memoryview) -> bytes:
        flags, _, fh = proto.GETATTR_IN.unpack_from(args)
        return self._attr(self.ops.getattr(ctx, node, fh if flags & proto.GETATTR_FH else None))

    def _setattr(self, ctx: Context, node: int, args: memoryview) -> bytes:
        (valid, _, fh, size, _, atime, mtime, _, atimensec, mtimensec, _, mode, _, uid, gid, _) = (
            proto.SETATTR_IN.unpack_from(args)
        )
        change = SetAttr(
            mode=mode if valid & proto.FATTR_MODE else None,
            uid=uid if valid & proto.FATTR_UID else None,
            gid=gid if valid & proto.FATTR_GID else None,
            size=size if valid & proto.FATTR_SIZE else None,
            atime_ns=atime * 1_000_000_000 + atimensec if valid & proto.FATTR_ATIME else None,
            mtime_ns=mtime * 1_000_000_000 + mtimensec if valid & proto.FATTR_MTIME else None,
            atime_now=bool(valid & proto.FATTR_ATIME_NOW),
            mtime_now=bool(valid & proto.FATTR_MTIME_NOW),
            fh=fh if valid & proto.FATTR_FH else None,
            kill_suidgid=bool(valid & proto.FATTR_KILL_SUIDGID),
        )
        return self._attr(self.ops.setattr(ctx, node, change))

    def _symlink(self, ctx: Context, node: int, args: memoryview) -> bytes:
        name, target = _split_names(args, 2)
        return self._entry(self.ops.symlink(ctx, node, name, target))

    def _mknod(self, ctx: Context, node: int, args: memoryview) -> bytes:
        mode, rdev, _, _ = proto.MKNOD_IN.unpack_from(args)
        name = _split_names(args[proto.MKNOD_IN.size :], 1)[0]
        return self._entry(self.ops.mknod(ctx, node, name, mode, proto.decode_dev(rdev)))

    def _mkdir(self, ctx: Context, node: int, args: memoryview) -> bytes:
        mode, _ = proto.MKDIR_IN.unpack_from(args)
        name = _split_names(args[proto.MKDIR_IN.size :], 1)[0]
        return self._entry(self.ops.mkdir(ctx, node, name, stat.S_IFDIR | (mode & 0o7777)))

    def _rename(self, ctx: Context, node: int, args: memoryview) -> bytes:
        (new_dir,) = proto.RENAME_IN.unpack_from(args)
        old, new = _split_names(args[proto.RENAME_IN.size :], 2)
        self.ops.rename(ctx, node, old, new_dir, new, 0)
        return b""

    def _rename2(self, ctx: Context, node: int, args: memoryview) -> bytes:
        new_dir, flags, _ = proto.RENAME2_IN.unpack_from(args)
        old, new = _split_names(args[proto.RENAME2_IN.size :], 2)
        self.ops.rename(ctx, node, old, new_dir, new, flags)
        return b""

    def _link(self, ctx: Context, node: int, args: memoryview) -> bytes:
        (old_node,) = proto.LINK_IN.unpack_from(args)
        name = _split_names(args[proto.LINK_IN.size :], 1)[0]
        return self._entry(self.ops.link(ctx, old_node, node, name))

    @staticmethod
    def _opened(opened: Opened) -> bytes:
        return proto.OPEN_OUT.pack(opened.fh, opened.flags, opened.backing_id)

    def _open(self, ctx: Context, node: int, args: memoryview) -> bytes:
        flags, open_flags = proto.OPEN_IN.unpack_from(args)
        opened = self.ops.open(ctx, node, flags)
        if open_flags & proto.OPEN_KILL_SUIDGID:  # O_TRUNC by a caller without CAP_FSETID
            self.ops.setattr(ctx, node, SetAttr(fh=opened.fh, kill_suidgid=True))
        return self._opened(opened)

    def _create(self, ctx: Context, node: int, args: memoryview) -> bytes:
        flags, mode, _, _ = proto.CREATE_IN.unpack_from(args)
        name = _split_names(args[proto.CREATE_IN.size :], 1)[0]
        entry, opened = self.ops.create(ctx, node, name, mode, flags)
        return self._entry(entry) + self._opened(opened)

    def _read(self, ctx: Context, node: int, args: memoryview) -> bytes:
        fh, offset, size, *_ = proto.READ_IN.unpack_from(args)
        return self.ops.read(ctx, node, fh, offset, size)

    def _write(self, ctx: Context, node: int, args: memoryview) -> bytes:
        fh, offset, size, write_flags, *_ = proto.WRITE_IN.unpack_from(args)
        data = args[proto.WRITE_IN.size : proto.WRITE_IN.size + size]
        if write_flags & proto.WRITE_KILL_SUIDGID:
            self.ops.setattr(ctx, node, SetAttr(fh=fh, kill_suidgid=True))
        return proto.WRITE_OUT.pack(self.ops.write(ctx, node, fh, offset, data), 0)

    def _statfs(self, ctx: Context, node: int, args: memoryview) -> bytes:
        sv = self.ops.statfs(ctx, node)
        return proto.KSTATFS.pack(
            sv.f_blocks, sv.f_bfree, sv.f_bavail, sv.f_files, sv.f_ffree, sv.f_bsize, sv.f_namemax, sv.f_frsize, 0
        )

    def _release(self, ctx: Context, node: int, args: memoryview) -> bytes:
        fh, *_ = proto.RELEASE_IN.unpack_from(args)
        self.ops.release(ctx, node, fh)
        return b""

    def _flush(self, ctx: Context, node: int, args: memoryview) -> bytes:
        fh, *_ = proto.FLUSH_IN.unpack_from(args)
        self.ops.flush(ctx, node, fh)
        return b""

    def _fsync(self, ctx: Context, node: int, args: memoryview) -> bytes:
        fh, flags, _ = proto.FSYNC_IN.unpack_from(args)
        self.ops.fsync(ctx, node, fh, bool(flags & proto.FSYNC_FDATASYNC))
        return b""

    def _setxattr(self, ctx: Context, node: int, args: memoryview) -> bytes:
        size, flags = proto.SETXATTR_IN.unpack_from(args)
        rest = bytes(args[proto.SETXATTR_IN.size :])
        name, _, value = rest.partition(b"\0")
        self.ops.setxattr(ctx, node, name, value[:size], flags)
        return b""

    def _getxattr(self, ctx: Context, node: int, args: memoryview) -> bytes:
        size, _ = proto.GETXATTR_IN.unpack_from(args)
        name = _split_names(args[proto.GETXATTR_IN.size :], 1)[0]
        return self._sized(self.ops.getxattr(ctx, node, name), size)

    def _listxattr(self, ctx: Context, node: int, args: memoryview) -> bytes:
        size, _ = proto.GETXATTR_IN.unpack_from(args)
        names = self.ops.listxattr(ctx, node)
        return self._sized(b"".join(n + b"\0" for n in names), size)

    @staticmethod
    def _sized(value: bytes, size: int) -> bytes:
        """getxattr/listxattr: size 0 asks for the length only; too small a buffer is ERANGE."""
        if size == 0:
            return proto.GETXATTR_OUT.pack(len(value), 0)
        if len(value) > size:
            raise OSError(errno.ERANGE, "xattr buffer too small")
        return value

    def _opendir(self, ctx: Context, node: int, args: memoryview) -> bytes:
        flags, _ = proto.OPEN_IN.unpack_from(args)
        return self._opened(Opened(self.ops.opendir(ctx, node, flags)))

    def _readdir(self, ctx: Context, node: int, args: memoryview) -> bytes:
        fh, offset, size, *_ = proto.READ_IN.unpack_from(args)
        out = bytearray()
        for name, ino, dtype, next_offset in self.ops.readdir(ctx, node, fh, offset):
            record = proto.pack_dirent(ino, next_offset, name, dtype)
            if len(out) + len(record) > size:
                break
            out += record
        return bytes(out)

    def _releasedir(self, ctx: Context, node: int, args: memoryview) -> bytes:
        fh, *_ = proto.RELEASE_IN.unpack_from(args)
        self.ops.releasedir(ctx, node, fh)
        return b""

    def _fallocate(self, ctx: Context, node: int, args: memoryview) -> bytes:
        fh, offset, length, mode, _ = proto.FALLOCATE_IN.unpack_from(args)
        self.ops.fallocate(ctx, node, fh, offset, length, mode)
        return b""

    def _lseek(self, ctx: Context, node: int, args: memoryview) -> bytes:
        fh, offset, whence, _ = proto.LSEEK_IN.unpack_from(args)
        return proto.LSEEK_OUT.pack(self.ops.lseek(ctx, node, fh, offset, whence))
