"""The union filesystem's FUSE operations: aufs semantics over a stack of branch dirs.

Branch 0 is the writable top and every change lands there. The operations only check
a request and delegate: `resolve` says which branch shows a path, `copyup` makes the
changes in branch 0 (copy-up, whiteouts, opaque dirs), `nodes` keeps the ids the
kernel holds, and `handles` the open files with their passthrough backing ids.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import time
from collections.abc import Iterable, Iterator, Sequence

from cowstore.drivers.aufs.unionfs.branches import Branch, is_reserved
from cowstore.drivers.aufs.unionfs.copyup import Upper, mark_opaque
from cowstore.drivers.aufs.unionfs.handles import Handles
from cowstore.drivers.aufs.unionfs.nodes import Node, Nodes
from cowstore.drivers.aufs.unionfs.resolve import Resolver, join, not_found, split
from cowstore.host import fsutil
from cowstore.host.fuse import Context, Entry, Opened, Operations, Session, SetAttr
from cowstore.host.fuse import protocol as proto

_CAPS = b"security.capability"
_NAME_MAX = 255
_NO_STAT = os.stat_result(
    (0,) * 10, {"st_atime_ns": 0, "st_mtime_ns": 0, "st_ctime_ns": 0, "st_blksize": 0, "st_blocks": 0, "st_rdev": 0}
)


def _error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _in_group(ctx: Context, gid: int) -> bool:
    """Whether the caller's fsgid or a supplementary group is `gid`."""
    if ctx.gid == gid:
        return True
    try:
        with open(f"/proc/{ctx.pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Groups:"):
                    return gid in {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return False


def _without_setid(ctx: Context, st: os.stat_result) -> int:
    """The mode after the VFS kill of set-id bits (SetAttr.kill_suidgid): S_ISUID goes,
    S_ISGID too if the file is group-executable or the caller is not in its group."""
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return mode
    mode &= ~stat.S_ISUID
    if mode & stat.S_ISGID and (mode & stat.S_IXGRP or not _in_group(ctx, st.st_gid)):
        mode &= ~stat.S_ISGID
    return mode


class UnionFS(Operations):
    """FUSE operations of one union mount (branch 0 must be writable)."""

    def __init__(self, branches: Sequence[Branch], *, timeout: float = 10.0) -> None:
        if not branches or not branches[0].writable:
            raise ValueError("the top branch must be writable (rw)")
        self.timeout = timeout
        self.paths = Resolver(branches)
        self.upper = Upper(self.paths)
        self.nodes = Nodes(timeout)
        self.handles = Handles(self.nodes)

    # -- names ------------------------------------------------------------------------------

    def _child(self, parent: int, name: bytes) -> bytes:
        """The union path of an existing entry: `.wh.` names are never shown."""
        if len(name) > _NAME_MAX:
            raise _error(errno.ENAMETOOLONG)
        if is_reserved(name):
            raise not_found()
        return join(self.nodes.get(parent).path, name)

    def _new_name(self, parent: int, name: bytes) -> bytes:
        """A path about to be created: `.wh.` names are refused like aufs does."""
        if is_reserved(name):
            raise OSError(errno.EPERM, "names starting with .wh. are reserved")
        if len(name) > _NAME_MAX:
            raise _error(errno.ENAMETOOLONG)
        return join(self.nodes.get(parent).path, name)

    def _own(self, real: bytes, ctx: Context, mode: int | None) -> os.stat_result:
        """Give a new entry to the caller (the server runs as root)."""
        parent_st = os.lstat(os.path.dirname(real))
        uid = ctx.uid
        gid = parent_st.st_gid if parent_st.st_mode & stat.S_ISGID else ctx.gid
        st = os.lstat(real)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.chown(real, uid, gid, follow_symlinks=False)
            if mode is not None and mode & 0o6000 and not stat.S_ISLNK(st.st_mode):
                os.chmod(real, mode & 0o7777)
            st = os.lstat(real)
        return st

    def _node_stat(self, node: Node) -> os.stat_result:
        if self.nodes.named(node) or not node.open_fds:
            return self.paths.lstat(node.path)[1]
        return os.fstat(node.open_fds[0])  # unlinked but still open

    # -- metadata ----------------------------------------------------------------------------

    def init(self, session: Session) -> None:
        self.handles.session = session

    def lookup(self, ctx: Context, parent: int, name: bytes) -> Entry:
        path = self._child(parent, name)
        if self.paths.locate(path) is None:
            return Entry(0, _NO_STAT, self.timeout, 0)  # a negative entry the kernel may cache
        _, st = self.paths.lstat(path)
        return self.nodes.entry(path, st)

    def forget(self, items: Iterable[tuple[int, int]]) -> None:
        self.nodes.forget(items)

    def getattr(self, ctx: Context, node: int, fh: int | None) -> tuple[os.stat_result, float]:
        handle = self.handles.find(fh)
        if handle is not None:
            return os.fstat(handle.fd), self.timeout
        return self._node_stat(self.nodes.get(node)), self.timeout

    def setattr(self, ctx: Context, node: int, change: SetAttr) -> tuple[os.stat_result, float]:
        n = self.nodes.get(node)
        handle = self.handles.find(change.fh)
        if change.kill_suidgid:
            current = os.fstat(handle.fd) if handle is not None else self._node_stat(n)
            killed = _without_setid(ctx, current)
            if change.mode is None and killed != current.st_mode:
                change = dataclasses.replace(change, mode=killed)
            elif dataclasses.replace(change, fh=None) == SetAttr(kill_suidgid=True):
                return current, self.timeout  # nothing to kill: no copy-up either
        if self.nodes.named(n):
            real = self.upper.copy_up(n.path, data=change.size != 0)
        elif handle is not None:
            real = f"/proc/self/fd/{handle.fd}".encode()
        else:
            raise not_found()
        st = os.lstat(real)
        if change.size is not None:
            if handle is not None:
                os.ftruncate(handle.fd, change.size)
            else:
                os.truncate(real, change.size)
        if change.uid is not None or change.gid is not None:
            uid = change.uid if change.uid is not None else -1
            gid = change.gid if change.gid is not None else -1
            os.chown(real, uid, gid, follow_symlinks=False)
        if change.mode is not None and not stat.S_ISLNK(st.st_mode):
            os.chmod(real, stat.S_IMODE(change.mode))
        if change.atime_ns is not None or change.mtime_ns is not None or change.atime_now or change.mtime_now:
            now = time.time_ns()
            atime = now if change.atime_now else change.atime_ns if change.atime_ns is not None else st.st_atime_ns
            mtime = now if change.mtime_now else change.mtime_ns if change.mtime_ns is not None else st.st_mtime_ns
            os.utime(real, ns=(atime, mtime), follow_symlinks=False)
        return os.lstat(real), self.timeout

    def readlink(self, ctx: Context, node: int) -> bytes:
        path = self.nodes.get(node).path
        return os.readlink(self.paths.real(self.paths.need(path).branch, path))

    def statfs(self, ctx: Context, node: int) -> os.statvfs_result:
        return os.statvfs(self.paths.real(0, b""))

    # -- namespace changes -------------------------------------------------------------------

    def mknod(self, ctx: Context, parent: int, name: bytes, mode: int, rdev: int) -> Entry:
        path = self._new_name(parent, name)
        real = self.upper.prepare_create(path)
        os.mknod(real, mode, rdev)
        return self.nodes.entry(path, self._own(real, ctx, mode))

    def mkdir(self, ctx: Context, parent: int, name: bytes, mode: int) -> Entry:
        path = self._new_name(parent, name)
        parent_path, _ = split(path)
        lower = self.paths.locate(path) is None and self.paths.lower_exists(parent_path, name)
        real = self.upper.prepare_create(path)
        os.mkdir(real, stat.S_IMODE(mode))
        if lower:  # a whiteout hid a lower dir: the new dir must not show its children
            mark_opaque(real)
        return self.nodes.entry(path, self._own(real, ctx, mode))

    def symlink(self, ctx: Context, parent: int, name: bytes, target: bytes) -> Entry:
        path = self._new_name(parent, name)
        real = self.upper.prepare_create(path)
        os.symlink(target, real)
        return self.nodes.entry(path, self._own(real, ctx, None))

    def link(self, ctx: Context, node: int, new_parent: int, new_name: bytes) -> Entry:
        n = self.nodes.get(node)
        path = self._new_name(new_parent, new_name)
        src = self.upper.copy_up(n.path)
        real = self.upper.prepare_create(path)
        os.link(src, real)
        return self.nodes.link(n, path, os.lstat(real))

    def unlink(self, ctx: Context, parent: int, name: bytes) -> None:
        path = self._child(parent, name)
        loc = self.paths.need(path)
        if stat.S_ISDIR(loc.mode):
            raise _error(errno.EISDIR)
        self.upper.delete(path, loc)
        self.nodes.drop_path(path)

    def rmdir(self, ctx: Context, parent: int, name: bytes) -> None:
        path = self._child(parent, name)
        loc = self.paths.need(path)
        if not stat.S_ISDIR(loc.mode):
            raise _error(errno.ENOTDIR)
        if not self.paths.is_empty(path, loc):
            raise _error(errno.ENOTEMPTY)
        self.upper.delete(path, loc)
        self.nodes.drop_path(path)

    def rename(self, ctx: Context, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int) -> None:
        if flags & ~proto.RENAME_NOREPLACE:
            raise OSError(errno.EINVAL, "only RENAME_NOREPLACE is supported")
        src = self._child(parent, name)
        dst = self._new_name(new_parent, new_name)
        sloc, sst = self.paths.lstat(src)
        dloc = self.paths.locate(dst)
        if dloc is not None:
            if flags & proto.RENAME_NOREPLACE:
                raise _error(errno.EEXIST)
            src_dir, dst_dir = stat.S_ISDIR(sloc.mode), stat.S_ISDIR(dloc.mode)
            if src_dir and not dst_dir:
                raise _error(errno.ENOTDIR)
            if dst_dir and not src_dir:
                raise _error(errno.EISDIR)
            if dst_dir and not self.paths.is_empty(dst, dloc):
                raise _error(errno.ENOTEMPTY)
            dst_st = os.lstat(self.paths.real(dloc.branch, dst))
            if (dst_st.st_dev, dst_st.st_ino) == (sst.st_dev, sst.st_ino):
                return  # two names of one inode: POSIX says do nothing
        self.upper.rename(src, sloc, dst, dloc)
        self.nodes.drop_path(dst)
        self.nodes.move(src, dst)

    # -- files -------------------------------------------------------------------------------

    def open(self, ctx: Context, node: int, flags: int) -> Opened:
        n = self.nodes.get(node)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        real = self.upper.copy_up(n.path, data=not flags & os.O_TRUNC) if writing else self.paths.real_of(n.path)
        fd = os.open(real, (flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY)) | os.O_NOFOLLOW | os.O_CLOEXEC)
        # Passthrough writes never reach us, and with HANDLE_KILLPRIV_V2 the kernel
        # leaves killing set-id bits on write to us: such files get their writes here.
        setid = writing and os.fstat(fd).st_mode & (stat.S_ISUID | stat.S_ISGID)
        return self.handles.open_file(n, fd, passthrough=not setid)

    def create(self, ctx: Context, parent: int, name: bytes, mode: int, flags: int) -> tuple[Entry, Opened]:
        path = self._new_name(parent, name)
        real = self.upper.prepare_create(path)
        fd = os.open(real, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, stat.S_IMODE(mode))
        try:
            entry = self.nodes.entry(path, self._own(real, ctx, mode))
        except BaseException:
            os.close(fd)
            raise
        return entry, self.handles.open_file(self.nodes.get(entry.nodeid), fd)

    def read(self, ctx: Context, node: int, fh: int, offset: int, size: int) -> bytes:
        return os.pread(self.handles.file(fh).fd, size, offset)

    def write(self, ctx: Context, node: int, fh: int, offset: int, data: memoryview) -> int:
        return os.pwrite(self.handles.file(fh).fd, data, offset)

    def fsync(self, ctx: Context, node: int, fh: int, datasync: bool) -> None:
        (os.fdatasync if datasync else os.fsync)(self.handles.file(fh).fd)

    def fallocate(self, ctx: Context, node: int, fh: int, offset: int, length: int, mode: int) -> None:
        fsutil.fallocate(self.handles.file(fh).fd, mode, offset, length)

    def lseek(self, ctx: Context, node: int, fh: int, offset: int, whence: int) -> int:
        return os.lseek(self.handles.file(fh).fd, offset, whence)

    def release(self, ctx: Context, node: int, fh: int) -> None:
        self.handles.release_file(fh)

    # -- xattrs ------------------------------------------------------------------------------

    def getxattr(self, ctx: Context, node: int, name: bytes) -> bytes:
        n = self.nodes.get(node)
        if name == _CAPS and n.no_caps:
            raise OSError(errno.ENODATA, "no security.capability")
        try:
            return os.getxattr(self.paths.real_of(n.path), name, follow_symlinks=False)
        except OSError as exc:
            if name == _CAPS and exc.errno == errno.ENODATA:
                n.no_caps = True
            raise

    def listxattr(self, ctx: Context, node: int) -> list[bytes]:
        real = self.paths.real_of(self.nodes.get(node).path)
        return [os.fsencode(n) for n in os.listxattr(real, follow_symlinks=False)]

    def setxattr(self, ctx: Context, node: int, name: bytes, value: bytes, flags: int) -> None:
        n = self.nodes.get(node)
        n.no_caps = False
        os.setxattr(self.upper.copy_up(n.path), name, value, flags, follow_symlinks=False)

    def removexattr(self, ctx: Context, node: int, name: bytes) -> None:
        n = self.nodes.get(node)
        n.no_caps = False
        os.getxattr(self.paths.real_of(n.path), name, follow_symlinks=False)  # ENODATA before any copy-up
        os.removexattr(self.upper.copy_up(n.path), name, follow_symlinks=False)

    # -- directories -------------------------------------------------------------------------

    def opendir(self, ctx: Context, node: int, flags: int) -> int:
        n = self.nodes.get(node)
        loc, st = self.paths.lstat(n.path)
        if not stat.S_ISDIR(loc.mode):
            raise _error(errno.ENOTDIR)
        parent_ino = self.paths.lstat(split(n.path)[0])[1].st_ino if n.path else st.st_ino
        entries = [(b".", st.st_ino, stat.S_IFDIR >> 12), (b"..", parent_ino, stat.S_IFDIR >> 12)]
        return self.handles.open_dir(entries + self.paths.list_dir(n.path, loc))

    def readdir(self, ctx: Context, node: int, fh: int, offset: int) -> Iterator[tuple[bytes, int, int, int]]:
        entries = self.handles.dir_entries(fh)
        for index in range(offset, len(entries)):
            name, ino, dtype = entries[index]
            yield name, ino, dtype, index + 1

    def releasedir(self, ctx: Context, node: int, fh: int) -> None:
        self.handles.release_dir(fh)
