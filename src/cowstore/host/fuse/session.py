"""A FUSE request loop: decode kernel requests, call an Operations object, encode replies.

It is deliberately filesystem-agnostic (a union filesystem and a single-file block
device server both sit on it). Handlers raise OSError for errors; anything else
becomes EIO and is logged, so one bad request never kills the mount.

`serve` runs the loop in one thread or in several. With FUSE_PASSTHROUGH, READ and
WRITE never arrive here, so what is left is metadata, for which one thread under the
GIL is as fast as several. A server whose data does pass through here (the block
server) wants several: each request spends most of its time in a system call that
releases the GIL (the read from /dev/fuse, the pool's disk I/O, the reply), so the
threads overlap the requests that a loop device sends in parallel.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Callable

from cowstore.host.fuse import device
from cowstore.host.fuse import protocol as proto
from cowstore.host.fuse.channel import MAX_PAGES, MAX_WRITE, Channel, Request
from cowstore.host.fuse.operations import Context, Entry, Opened, Operations, SetAttr

log = logging.getLogger("cowstore.fuse")


def _split_names(data: memoryview, count: int) -> list[bytes]:
    """The NUL-terminated strings that follow a request's fixed part."""
    return bytes(data).split(b"\0")[:count]


class Session:
    """One mounted FUSE connection and its request loop."""

    def __init__(
        self,
        ops: Operations,
        fd: int,
        *,
        want_passthrough: bool = True,
        async_dio: bool = False,
        max_background: int = 12,
    ) -> None:
        """`async_dio` lets the kernel send the requests of one O_DIRECT read or write in
        parallel and complete asynchronous direct I/O (a loop device's) without waiting
        on each. `max_background` caps such asynchronous requests (and readahead) in
        flight; the kernel's default is 12. Both matter only to a multi-threaded server."""
        self.ops = ops
        self.fd = fd
        self.want_passthrough = want_passthrough
        self.async_dio = async_dio
        self.max_background = max_background
        self.passthrough = False
        self.proto_minor = 0
        self._channel = Channel(fd)
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
            proto.UNLINK: self._unlink,
            proto.RMDIR: self._rmdir,
            proto.RENAME: self._rename,
            proto.RENAME2: self._rename2,
            proto.LINK: self._link,
            proto.OPEN: self._open,
            proto.CREATE: self._create,
            proto.STATFS: self._statfs,
            proto.RELEASE: self._release,
            proto.FLUSH: self._flush,
            proto.FSYNC: self._fsync,
            proto.SETXATTR: self._setxattr,
            proto.GETXATTR: self._getxattr,
            proto.LISTXATTR: self._listxattr,
            proto.REMOVEXATTR: self._removexattr,
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
            request = self._channel.receive()
            if request is None:
                raise OSError(errno.ENODEV, "FUSE connection closed before INIT")
            if request.opcode == proto.INIT:
                self._channel.reply(request.unique, self._init(request.args))
                self.ops.init(self)
                return
            self._channel.reply_error(request.unique, errno.EIO)

    def serve(self, threads: int = 1) -> None:
        """Answer requests until the filesystem is unmounted or aborted (ENODEV on read).

        The calling thread serves, and `threads - 1` more, each with its own Channel;
        the kernel hands each request to one of them. Returns once all have ended, then
        raising the error that ended a helper thread, if one did; an error in the calling
        thread's loop propagates at once. Operations must be thread-safe when `threads` > 1.
        """
        failures: list[Exception] = []
        helpers = [
            threading.Thread(target=self._serve_helper, args=(Channel(self.fd), failures), daemon=True)
            for _ in range(1, threads)
        ]
        for helper in helpers:
            helper.start()
        self._serve_channel(self._channel)
        for helper in helpers:
            helper.join()
        if failures:
            raise failures[0]

    def _serve_helper(self, channel: Channel, failures: list[Exception]) -> None:
        try:
            self._serve_channel(channel)
        except Exception as exc:
            log.exception("a FUSE serving thread failed")
            failures.append(exc)

    def _serve_channel(self, channel: Channel) -> None:
        while (request := channel.receive()) is not None:
            self._answer(channel, request)

    def _answer(self, channel: Channel, request: Request) -> None:
        opcode, unique, nodeid, ctx, args = request
        try:
            if opcode == proto.READ:  # READ and WRITE use the channel's page-aligned body
                payload: bytes | memoryview | None = self._read(ctx, nodeid, args, channel.body)
            elif opcode == proto.WRITE:
                payload = self._write(ctx, nodeid, args, channel)
            else:
                handler = self._handlers.get(opcode)
                if handler is None:
                    channel.reply_error(unique, errno.ENOSYS)
                    return
                payload = handler(ctx, nodeid, args)
        except OSError as exc:
            channel.reply_error(unique, exc.errno or errno.EIO)
            return
        except Exception:
            log.exception("opcode %d on node %d failed", opcode, nodeid)
            channel.reply_error(unique, errno.EIO)
            return
        if payload is not None:
            channel.reply(unique, payload)

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
        if self.async_dio:
            want |= proto.ASYNC_DIO
        granted = want & offered
        self.passthrough = bool(granted & proto.PASSTHROUGH)
        log.info("FUSE %d.%d, passthrough %s", major, self.proto_minor, "on" if self.passthrough else "off")
        return proto.INIT_OUT.pack(
            proto.KERNEL_MAJOR,
            self.proto_minor,
            max_readahead,
            granted & 0xFFFFFFFF,
            self.max_background,
            self.max_background * 3 // 4,  # congestion threshold, at the kernel's default ratio
            MAX_WRITE,
            1,
            MAX_PAGES,
            0,
            granted >> 32,
            1 if self.passthrough else 0,
        )

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

    def _unlink(self, ctx: Context, node: int, args: memoryview) -> bytes:
        self.ops.unlink(ctx, node, _split_names(args, 1)[0])
        return b""

    def _rmdir(self, ctx: Context, node: int, args: memoryview) -> bytes:
        self.ops.rmdir(ctx, node, _split_names(args, 1)[0])
        return b""

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

    def _read(self, ctx: Context, node: int, args: memoryview, body: memoryview) -> bytes | memoryview:
        fh, offset, size, *_ = proto.READ_IN.unpack_from(args)
        got = self.ops.read_into(ctx, node, fh, offset, body[:size])
        return body[:got] if isinstance(got, int) else got

    def _write(self, ctx: Context, node: int, args: memoryview, channel: Channel) -> bytes:
        fh, offset, size, write_flags, *_ = proto.WRITE_IN.unpack_from(args)
        if write_flags & proto.WRITE_KILL_SUIDGID:
            self.ops.setattr(ctx, node, SetAttr(fh=fh, kill_suidgid=True))
        return proto.WRITE_OUT.pack(self.ops.write(ctx, node, fh, offset, channel.data(size)), 0)

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

    def _removexattr(self, ctx: Context, node: int, args: memoryview) -> bytes:
        self.ops.removexattr(ctx, node, _split_names(args, 1)[0])
        return b""

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
