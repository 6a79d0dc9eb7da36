"""The union filesystem: aufs semantics over a stack of branch directories.

Branch 0 is the writable top; lookups go top-down and the first match wins, a
`.wh.<name>` file in a branch hides `<name>` in the branches below it, and a directory
holding `.wh..wh..opq` hides everything below it. Every change lands in branch 0:
writing to a lower file first copies it up, deleting a lower name leaves a whiteout.

Nodes handed to the kernel are keyed by union path, except that non-directories with
several links share one node per real inode, so the kernel sees hard links as one
inode (size and nlink stay coherent between names). Data never passes through here
when the kernel grants FUSE_PASSTHROUGH: OPEN registers the branch file as the
backing file and the kernel reads and writes it directly.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import logging
import os
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Self

from cowstore.drivers.aufs.unionfs import copyup
from cowstore.drivers.aufs.unionfs.branches import META_PREFIX, OPAQUE, Branch, is_reserved, whiteout
from cowstore.host import fsutil
from cowstore.host.fuse import Context, Entry, Opened, Operations, Session, SetAttr
from cowstore.host.fuse import protocol as proto

log = logging.getLogger("cowstore.unionfs")

ROOT = 1
_CAPS = b"security.capability"
_TMP_PREFIX = META_PREFIX + b"tmp."
_NO_STAT = os.stat_result(
    (0,) * 10, {"st_atime_ns": 0, "st_mtime_ns": 0, "st_ctime_ns": 0, "st_blksize": 0, "st_blocks": 0, "st_rdev": 0}
)


@dataclass
class Loc:
    """Where a union path lives: the winning branch and, for a directory, every branch
    that contributes entries to it (top-down, cut at an opaque dir or a whiteout)."""

    branch: int
    mode: int
    dirs: list[int] = field(default_factory=list)


@dataclass
class Backing:
    """A passthrough backing file registered with the kernel for one node."""

    id: int
    key: tuple[int, int]
    users: int = 0


class Node:
    __slots__ = ("backing", "id", "nlookup", "open_fds", "paths")

    def __init__(self, nid: int, path: bytes) -> None:
        self.id = nid
        self.paths = [path]
        self.nlookup = 0
        self.backing: Backing | None = None
        self.open_fds: list[int] = []

    @property
    def path(self) -> bytes:
        return self.paths[0]


@dataclass
class Handle:
    fd: int
    node: Node
    backing: Backing | None


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _split(path: bytes) -> tuple[bytes, bytes]:
    parent, _, name = path.rpartition(b"/")
    return parent, name


def _lexists(path: bytes) -> bool:
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _lstat(path: bytes) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _dtype(entry: os.DirEntry) -> int:
    """d_type without a stat for the common kinds (scandir already knows them)."""
    if entry.is_dir(follow_symlinks=False):
        return stat.S_IFDIR >> 12
    if entry.is_symlink():
        return stat.S_IFLNK >> 12
    if entry.is_file(follow_symlinks=False):
        return stat.S_IFREG >> 12
    return proto.dirent_type(entry.stat(follow_symlinks=False).st_mode)


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


def _under(path: bytes, prefix: bytes) -> bool:
    return path == prefix or (path.startswith(prefix + b"/") if prefix else True)


class UnionFS(Operations):
    """FUSE operations of one union mount (branch 0 must be writable)."""

    def __init__(self, branches: Sequence[Branch], *, timeout: float = 10.0) -> None:
        if not branches or not branches[0].writable:
            raise ValueError("the top branch must be writable (rw)")
        self.branches = list(branches)
        self.timeout = timeout
        self.session: Session | None = None
        self._nodes: dict[int, Node] = {ROOT: Node(ROOT, b"")}
        self._by_path: dict[bytes, int] = {b"": ROOT}
        self._by_inode: dict[tuple[int, int], int] = {}
        self._next_id = itertools.count(ROOT + 1)
        self._locs: dict[bytes, Loc] = {}
        self._handles: dict[int, Handle] = {}
        self._dir_handles: dict[int, list[tuple[bytes, int, int]]] = {}
        self._next_fh = itertools.count(1)
        self._link_index: dict[int, dict[int, list[bytes]]] = {}
        # Nodes known to carry no security.capability. FUSE never sets S_NOSEC, so the
        # kernel asks for that xattr before EVERY write, passthrough writes included
        # (file_remove_privs); answering from here keeps that round trip short. Only
        # setxattr/removexattr through this mount can add one (a write to the branch
        # file itself clears it there), so those are the only invalidations needed.
        self._no_caps: set[int] = set()

    # -- branch paths and resolution ----------------------------------------------------

    def real(self, branch: int, path: bytes) -> bytes:
        base = self.branches[branch].path
        return base + b"/" + path if path else base

    def _root_loc(self) -> Loc:
        dirs = []
        for index in range(len(self.branches)):
            dirs.append(index)
            if _lexists(self.real(index, OPAQUE)):
                break
        return Loc(0, stat.S_IFDIR, dirs)

    def locate(self, path: bytes) -> Loc | None:
        """Resolve a union path (cached until a change touches it)."""
        loc = self._locs.get(path)
        if loc is not None:
            return loc
        if not path:
            loc = self._root_loc()
        else:
            parent, name = _split(path)
            ploc = self.locate(parent)
            if ploc is None or not ploc.dirs:
                return None
            loc = self._scan(parent, name, ploc.dirs)
            if loc is None:
                return None
        self._locs[path] = loc
        return loc

    def _scan(self, parent: bytes, name: bytes, dirs: Iterable[int]) -> Loc | None:
        found: Loc | None = None
        for index in dirs:
            base = self.real(index, parent)
            st = _lstat(base + b"/" + name)
            if st is not None:
                is_dir = stat.S_ISDIR(st.st_mode)
                if found is None:
                    found = Loc(index, stat.S_IFMT(st.st_mode))
                    if not is_dir:
                        return found
                elif not is_dir:
                    break
                found.dirs.append(index)
                if _lexists(base + b"/" + name + b"/" + OPAQUE):
                    break
            if _lexists(base + b"/" + whiteout(name)):
                break
        return found

    def _lower_exists(self, parent: bytes, name: bytes) -> bool:
        """Whether `name` would show through from a lower branch if branch 0 had nothing."""
        ploc = self.locate(parent)
        if ploc is None:
            return False
        return self._scan(parent, name, [i for i in ploc.dirs if i != 0]) is not None

    def _forget_locs(self, path: bytes, subtree: bool = False) -> None:
        self._locs.pop(path, None)
        if subtree:
            for key in [k for k in self._locs if _under(k, path)]:
                del self._locs[key]

    def _need(self, path: bytes) -> Loc:
        loc = self.locate(path)
        if loc is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        return loc

    def _lstat_path(self, path: bytes) -> tuple[Loc, os.stat_result]:
        loc = self._need(path)
        st = _lstat(self.real(loc.branch, path))
        if st is None:  # a branch changed behind our back: resolve again
            self._forget_locs(path, subtree=True)
            loc = self._need(path)
            st = os.lstat(self.real(loc.branch, path))
        return loc, st

    # -- nodes ----------------------------------------------------------------------------

    def _node(self, nid: int) -> Node:
        node = self._nodes.get(nid)
        if node is None:
            raise OSError(errno.ESTALE, "unknown node")
        return node

    def _child(self, parent_nid: int, name: bytes) -> bytes:
        if is_reserved(name) or len(name) > 255:
            raise OSError(errno.ENOENT if len(name) <= 255 else errno.ENAMETOOLONG, "reserved name")
        return _join(self._node(parent_nid).path, name)

    def _new_name(self, parent_nid: int, name: bytes) -> bytes:
        """A path about to be created: `.wh.` names are refused like aufs does."""
        if is_reserved(name):
            raise OSError(errno.EPERM, "names starting with .wh. are reserved")
        if len(name) > 255:
            raise OSError(errno.ENAMETOOLONG, "name too long")
        return _join(self._node(parent_nid).path, name)

    def _entry(self, path: bytes, st: os.stat_result) -> Entry:
        """Answer a lookup: find or make the node and count the kernel's reference."""
        nid = self._by_path.get(path)
        key = (st.st_dev, st.st_ino)
        if nid is None and not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            nid = self._by_inode.get(key)
            if nid is not None:
                self._nodes[nid].paths.append(path)
                self._by_path[path] = nid
        if nid is None:
            nid = next(self._next_id)
            self._nodes[nid] = Node(nid, path)
            self._by_path[path] = nid
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            self._by_inode[key] = nid
        self._nodes[nid].nlookup += 1
        return Entry(nid, st, self.timeout, self.timeout)

    def _drop_path(self, path: bytes) -> None:
        """`path` no longer names its node (unlink, rename target, stale detach)."""
        nid = self._by_path.pop(path, None)
        if nid is None:
            return
        node = self._nodes[nid]
        if path in node.paths and len(node.paths) > 1:
            node.paths.remove(path)

    def _move_paths(self, old: bytes, new: bytes) -> None:
        for node in self._nodes.values():
            for i, path in enumerate(node.paths):
                if _under(path, old):
                    moved = new + path[len(old) :]
                    if self._by_path.get(path) == node.id:
                        del self._by_path[path]
                    self._by_path[moved] = node.id
                    node.paths[i] = moved

    def forget(self, items: Iterable[tuple[int, int]]) -> None:
        for nid, count in items:
            node = self._nodes.get(nid)
            if node is None or nid == ROOT:
                continue
            node.nlookup -= count
            if node.nlookup <= 0 and not node.open_fds:
                del self._nodes[nid]
                self._no_caps.discard(nid)
                for path in node.paths:
                    if self._by_path.get(path) == nid:
                        del self._by_path[path]
                for key, value in list(self._by_inode.items()):
                    if value == nid:
                        del self._by_inode[key]

    # -- copy-up --------------------------------------------------------------------------

    def _keep_times(self, real_dir: bytes) -> _TimesKeeper:
        return _TimesKeeper(real_dir)

    def _upper_dir(self, path: bytes) -> bytes:
        """Make sure directory `path` exists in branch 0 (copying up its ancestors)."""
        loc = self._need(path)
        if loc.dirs and loc.dirs[0] == 0:
            return self.real(0, path)
        if not stat.S_ISDIR(loc.mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        parent, _ = _split(path)
        parent_real = self._upper_dir(parent)
        src = self.real(loc.branch, path)
        dst = self.real(0, path)
        with self._keep_times(parent_real):
            copyup.copy_node(src, dst, os.lstat(src))
        loc.dirs.insert(0, 0)
        loc.branch = 0
        return dst

    def copy_up(self, path: bytes, *, data: bool = True) -> bytes:
        """Bring non-directory `path` into branch 0; returns its real path there."""
        loc = self._need(path)
        if loc.branch == 0:
            return self.real(0, path)
        if stat.S_ISDIR(loc.mode):
            return self._upper_dir(path)
        parent, name = _split(path)
        parent_real = self._upper_dir(parent)
        src = self.real(loc.branch, path)
        dst = self.real(0, path)
        st = os.lstat(src)
        branch = loc.branch
        tmp = parent_real + b"/" + _TMP_PREFIX + name[:200]
        with self._keep_times(parent_real):
            try:
                copyup.copy_node(src, tmp, st, data=data)
                os.rename(tmp, dst)
            except BaseException:
                if _lexists(tmp):
                    os.unlink(tmp)
                raise
        loc.branch = 0
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            self._copy_up_links(path, st, branch)
        return dst

    def _copy_up_links(self, path: bytes, st: os.stat_result, branch: int) -> None:
        """Keep a hard-link group whole: link every other visible name of the lower
        inode to the new upper copy, so changes show under all names and the diff
        carries them as tar hard links."""
        members = self._links_in(branch).get(st.st_ino, [])
        upper = self.real(0, path)
        for other in members:
            if other == path:
                continue
            loc = self.locate(other)
            if loc is None or loc.branch != branch:
                continue
            ost = _lstat(self.real(branch, other))
            if ost is None or ost.st_ino != st.st_ino:
                continue
            parent, _ = _split(other)
            parent_real = self._upper_dir(parent)
            with self._keep_times(parent_real):
                os.link(upper, self.real(0, other))
            loc.branch = 0

    def _links_in(self, branch: int) -> dict[int, list[bytes]]:
        """inode -> union paths of multiply-linked files in a branch (built once)."""
        index = self._link_index.get(branch)
        if index is None:
            index = {}
            root = self.branches[branch].path
            for dirpath, dirnames, filenames in os.walk(root):
                rel = os.path.relpath(dirpath, root)
                rel = b"" if rel == b"." else rel
                for name in filenames:
                    st = _lstat(dirpath + b"/" + name)
                    if st is not None and st.st_nlink > 1:
                        index.setdefault(st.st_ino, []).append(_join(rel, name))
            self._link_index[branch] = index
        return index

    def _prepare_create(self, path: bytes) -> bytes:
        """Ready branch 0 for a new entry at `path`: parent copied up, whiteout gone.
        Returns the real path; `path` must not exist in the union."""
        if self.locate(path) is not None:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        parent, name = _split(path)
        parent_real = self._upper_dir(parent)
        wh = parent_real + b"/" + whiteout(name)
        if _lexists(wh):
            os.unlink(wh)
        self._forget_locs(path, subtree=True)
        return parent_real + b"/" + name

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

    def _whiteout(self, parent: bytes, name: bytes) -> None:
        parent_real = self._upper_dir(parent)
        fd = os.open(parent_real + b"/" + whiteout(name), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)

    # -- directory listing -------------------------------------------------------------------

    def list_dir(self, path: bytes, loc: Loc) -> list[tuple[bytes, int, int]]:
        """Merged (name, ino, d_type) entries of a union directory, whiteouts applied."""
        seen: dict[bytes, tuple[bytes, int, int]] = {}
        hidden: set[bytes] = set()
        for index in loc.dirs:
            new_hidden = []
            with os.scandir(self.real(index, path)) as it:
                for entry in it:
                    name = entry.name
                    if name.startswith(b".wh."):
                        if not name.startswith(META_PREFIX):
                            new_hidden.append(name[4:])
                        continue
                    if name in seen or name in hidden:
                        continue
                    seen[name] = (name, entry.inode(), _dtype(entry))
            hidden.update(new_hidden)
        return list(seen.values())

    def _is_empty(self, path: bytes, loc: Loc) -> bool:
        return not self.list_dir(path, loc)

    def _clear_upper_dir(self, real_dir: bytes) -> None:
        """Remove the whiteouts and markers left in an upper dir that is empty in the union."""
        with os.scandir(real_dir) as it:
            for entry in it:
                if entry.name.startswith(b".wh."):
                    os.unlink(entry.path)

    # -- FUSE operations: metadata ------------------------------------------------------------

    def init(self, session: Session) -> None:
        self.session = session

    def lookup(self, ctx: Context, parent: int, name: bytes) -> Entry:
        path = self._child(parent, name)
        loc = self.locate(path)
        if loc is None:
            return Entry(0, _NO_STAT, self.timeout, 0)
        loc, st = self._lstat_path(path)
        return self._entry(path, st)

    def _node_stat(self, node: Node) -> os.stat_result:
        if self._by_path.get(node.path) == node.id or not node.open_fds:
            return self._lstat_path(node.path)[1]
        return os.fstat(node.open_fds[0])  # unlinked but still open

    def getattr(self, ctx: Context, node: int, fh: int | None) -> tuple[os.stat_result, float]:
        handle = self._handles.get(fh) if fh is not None else None
        if handle is not None:
            return os.fstat(handle.fd), self.timeout
        return self._node_stat(self._node(node)), self.timeout

    def setattr(self, ctx: Context, node: int, change: SetAttr) -> tuple[os.stat_result, float]:
        n = self._node(node)
        handle = self._handles.get(change.fh) if change.fh is not None else None
        if change.kill_suidgid:
            current = os.fstat(handle.fd) if handle is not None else self._node_stat(n)
            killed = _without_setid(ctx, current)
            if change.mode is None and killed != current.st_mode:
                change = dataclasses.replace(change, mode=killed)
            elif dataclasses.replace(change, fh=None) == SetAttr(kill_suidgid=True):
                return current, self.timeout  # nothing to kill: no copy-up either
        if self._by_path.get(n.path) == n.id:
            real = self.copy_up(n.path, data=change.size != 0)
        elif handle is not None:
            real = f"/proc/self/fd/{handle.fd}".encode()
        else:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
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
        n = self._node(node)
        loc = self._need(n.path)
        return os.readlink(self.real(loc.branch, n.path))

    def statfs(self, ctx: Context, node: int) -> os.statvfs_result:
        return os.statvfs(self.branches[0].path)

    # -- FUSE operations: namespace changes ------------------------------------------------------

    def mknod(self, ctx: Context, parent: int, name: bytes, mode: int, rdev: int) -> Entry:
        path = self._new_name(parent, name)
        real = self._prepare_create(path)
        os.mknod(real, mode, rdev)
        return self._entry(path, self._own(real, ctx, mode))

    def mkdir(self, ctx: Context, parent: int, name: bytes, mode: int) -> Entry:
        path = self._new_name(parent, name)
        parent_path, _ = _split(path)
        lower = self._lower_exists(parent_path, name) if self.locate(path) is None else False
        real = self._prepare_create(path)
        os.mkdir(real, stat.S_IMODE(mode))
        if lower:  # a whiteout hid a lower dir: the new dir must not show its children
            os.close(os.open(real + b"/" + OPAQUE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        return self._entry(path, self._own(real, ctx, mode))

    def symlink(self, ctx: Context, parent: int, name: bytes, target: bytes) -> Entry:
        path = self._new_name(parent, name)
        real = self._prepare_create(path)
        os.symlink(target, real)
        return self._entry(path, self._own(real, ctx, None))

    def link(self, ctx: Context, node: int, new_parent: int, new_name: bytes) -> Entry:
        n = self._node(node)
        path = self._new_name(new_parent, new_name)
        src = self.copy_up(n.path)
        real = self._prepare_create(path)
        os.link(src, real)
        st = os.lstat(real)
        self._by_inode[(st.st_dev, st.st_ino)] = n.id
        self._by_path[path] = n.id
        n.paths.append(path)
        n.nlookup += 1
        return Entry(n.id, st, self.timeout, self.timeout)

    def unlink(self, ctx: Context, parent: int, name: bytes) -> None:
        path = self._child(parent, name)
        loc = self._need(path)
        if stat.S_ISDIR(loc.mode):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        parent_path, _ = _split(path)
        if loc.branch == 0:
            os.unlink(self.real(0, path))
        if self._lower_exists(parent_path, name):
            self._whiteout(parent_path, name)
        self._forget_locs(path)
        self._drop_path(path)

    def rmdir(self, ctx: Context, parent: int, name: bytes) -> None:
        path = self._child(parent, name)
        loc = self._need(path)
        if not stat.S_ISDIR(loc.mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        if not self._is_empty(path, loc):
            raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY))
        parent_path, _ = _split(path)
        if loc.dirs and loc.dirs[0] == 0:
            real = self.real(0, path)
            self._clear_upper_dir(real)
            os.rmdir(real)
        if self._lower_exists(parent_path, name):
            self._whiteout(parent_path, name)
        self._forget_locs(path, subtree=True)
        self._drop_path(path)

    def rename(self, ctx: Context, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int) -> None:
        if flags & ~proto.RENAME_NOREPLACE:
            raise OSError(errno.EINVAL, "only RENAME_NOREPLACE is supported")
        src = self._child(parent, name)
        dst = self._new_name(new_parent, new_name)
        sloc, sst = self._lstat_path(src)
        dloc = self.locate(dst)
        src_dir = stat.S_ISDIR(sloc.mode)
        if dloc is not None:
            if flags & proto.RENAME_NOREPLACE:
                raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
            dst_dir = stat.S_ISDIR(dloc.mode)
            if src_dir and not dst_dir:
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            if dst_dir and not src_dir:
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
            if dst_dir and not self._is_empty(dst, dloc):
                raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY))
            dst_st = os.lstat(self.real(dloc.branch, dst))
            if (dst_st.st_dev, dst_st.st_ino) == (sst.st_dev, sst.st_ino):
                return  # two names of one inode: POSIX says do nothing
        src_parent, _ = _split(src)
        dst_parent, _ = _split(dst)
        dst_parent_real = self._upper_dir(dst_parent)
        merged = src_dir and (sloc.branch != 0 or any(i != 0 for i in sloc.dirs))
        if merged:
            source = dst_parent_real + b"/" + _TMP_PREFIX + new_name[:200]
            self._copy_tree(src, sloc, source)
        else:
            source = self.copy_up(src)
        dst_real = dst_parent_real + b"/" + new_name
        if dloc is not None and stat.S_ISDIR(dloc.mode) and dloc.dirs and dloc.dirs[0] == 0:
            self._clear_upper_dir(dst_real)
        wh = dst_parent_real + b"/" + whiteout(new_name)
        if _lexists(wh):
            os.unlink(wh)
        if src_dir and not merged and self._lower_exists(dst_parent, new_name):
            os.close(os.open(source + b"/" + OPAQUE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        os.rename(source, dst_real)
        if merged and _lexists(self.real(0, src)):
            self._remove_upper_tree(self.real(0, src))
        self._forget_locs(src, subtree=True)
        self._forget_locs(dst, subtree=True)
        if self._lower_exists(src_parent, name):
            self._whiteout(src_parent, name)
        self._drop_path(dst)
        self._move_paths(src, dst)

    def _copy_tree(self, path: bytes, loc: Loc, dst: bytes) -> None:
        """Materialise the merged view of directory `path` at real path `dst` (opaque)."""
        stack = [(path, loc, dst)]
        while stack:
            upath, uloc, target = stack.pop()
            src_dir = self.real(uloc.branch, upath)
            copyup.copy_node(src_dir, target, os.lstat(src_dir))
            if target == dst:  # lower entries at the new name must stay hidden
                os.close(os.open(target + b"/" + OPAQUE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            for name, _, _ in self.list_dir(upath, uloc):
                child = _join(upath, name)
                cloc = self._need(child)
                if stat.S_ISDIR(cloc.mode):
                    stack.append((child, cloc, target + b"/" + name))
                    continue
                real = self.real(cloc.branch, child)
                st = os.lstat(real)
                if cloc.branch == 0 or st.st_nlink > 1:
                    # keep the inode (and any hard links outside the tree): link, not copy
                    os.link(self.copy_up(child), target + b"/" + name)
                else:
                    copyup.copy_node(real, target + b"/" + name, st)
            os.utime(target, ns=(os.lstat(src_dir).st_atime_ns, os.lstat(src_dir).st_mtime_ns))

    @staticmethod
    def _remove_upper_tree(root: bytes) -> None:
        for dirpath, dirnames, filenames in os.walk(root, topdown=False):
            for name in filenames:
                os.unlink(dirpath + b"/" + name)
            for name in dirnames:
                full = dirpath + b"/" + name
                if os.path.islink(full):
                    os.unlink(full)
                else:
                    os.rmdir(full)
        os.rmdir(root)

    # -- FUSE operations: files -----------------------------------------------------------------

    def open(self, ctx: Context, node: int, flags: int) -> Opened:
        n = self._node(node)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        if writing:
            real = self.copy_up(n.path, data=not flags & os.O_TRUNC)
        else:
            loc, _ = self._lstat_path(n.path)
            real = self.real(loc.branch, n.path)
        fd = os.open(real, (flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY)) | os.O_NOFOLLOW | os.O_CLOEXEC)
        # Passthrough writes never reach us, and with HANDLE_KILLPRIV_V2 the kernel
        # leaves killing set-id bits on write to us: such files get their writes here.
        setid = writing and os.fstat(fd).st_mode & (stat.S_ISUID | stat.S_ISGID)
        return self._open_handle(n, fd, passthrough=not setid)

    def create(self, ctx: Context, parent: int, name: bytes, mode: int, flags: int) -> tuple[Entry, Opened]:
        path = self._new_name(parent, name)
        real = self._prepare_create(path)
        fd = os.open(real, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, stat.S_IMODE(mode))
        try:
            entry = self._entry(path, self._own(real, ctx, mode))
        except BaseException:
            os.close(fd)
            raise
        return entry, self._open_handle(self._nodes[entry.nodeid], fd)

    def _open_handle(self, node: Node, fd: int, *, passthrough: bool = True) -> Opened:
        """Register an open file; in a passthrough session a file served here gets
        FOPEN_DIRECT_IO, since one inode cannot mix passthrough and cached opens."""
        backing = None
        flags = 0
        if self.session is not None and self.session.passthrough and not passthrough:
            flags = proto.FOPEN_DIRECT_IO
        elif self.session is not None and self.session.passthrough:
            fst = os.fstat(fd)
            key = (fst.st_dev, fst.st_ino)
            backing = node.backing
            if backing is not None and backing.key != key:
                # The kernel inode still passes through to the pre-copy-up file; it can
                # have one backing file only. ESTALE makes the VFS look the name up
                # again, and the fresh lookup gets a new node for the new file.
                os.close(fd)
                for path in list(node.paths):
                    if self._by_path.get(path) == node.id:
                        del self._by_path[path]
                self._by_inode = {k: v for k, v in self._by_inode.items() if v != node.id}
                raise OSError(errno.ESTALE, "file was copied up while open")
            if backing is None:
                backing_id = self.session.backing_open(fd)
                if backing_id is not None:
                    backing = node.backing = Backing(backing_id, key)
            if backing is not None:
                backing.users += 1
                flags = proto.FOPEN_PASSTHROUGH
            else:
                flags = proto.FOPEN_DIRECT_IO
        fh = next(self._next_fh)
        self._handles[fh] = Handle(fd, node, backing)
        node.open_fds.append(fd)
        return Opened(fh, flags, backing.id if backing is not None else 0)

    def _handle(self, fh: int) -> Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return handle

    def read(self, ctx: Context, node: int, fh: int, offset: int, size: int) -> bytes:
        return os.pread(self._handle(fh).fd, size, offset)

    def write(self, ctx: Context, node: int, fh: int, offset: int, data: memoryview) -> int:
        return os.pwrite(self._handle(fh).fd, data, offset)

    def fsync(self, ctx: Context, node: int, fh: int, datasync: bool) -> None:
        handle = self._handle(fh)
        (os.fdatasync if datasync else os.fsync)(handle.fd)

    def fallocate(self, ctx: Context, node: int, fh: int, offset: int, length: int, mode: int) -> None:
        fsutil.fallocate(self._handle(fh).fd, mode, offset, length)

    def lseek(self, ctx: Context, node: int, fh: int, offset: int, whence: int) -> int:
        return os.lseek(self._handle(fh).fd, offset, whence)

    def release(self, ctx: Context, node: int, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        handle.node.open_fds.remove(handle.fd)
        os.close(handle.fd)
        backing = handle.backing
        if backing is not None:
            backing.users -= 1
            if backing.users == 0:
                if self.session is not None:
                    self.session.backing_close(backing.id)
                if handle.node.backing is backing:
                    handle.node.backing = None
        node_obj = handle.node
        if node_obj.nlookup <= 0 and not node_obj.open_fds and node_obj.id in self._nodes:
            self.forget([(node_obj.id, 0)])

    # -- xattrs ------------------------------------------------------------------------------------

    def _real_of(self, node: int) -> bytes:
        n = self._node(node)
        loc, _ = self._lstat_path(n.path)
        return self.real(loc.branch, n.path)

    def getxattr(self, ctx: Context, node: int, name: bytes) -> bytes:
        if name == _CAPS and node in self._no_caps:
            raise OSError(errno.ENODATA, "no security.capability")
        try:
            return os.getxattr(self._real_of(node), name, follow_symlinks=False)
        except OSError as exc:
            if name == _CAPS and exc.errno == errno.ENODATA:
                self._no_caps.add(node)
            raise

    def listxattr(self, ctx: Context, node: int) -> list[bytes]:
        return [os.fsencode(n) for n in os.listxattr(self._real_of(node), follow_symlinks=False)]

    def setxattr(self, ctx: Context, node: int, name: bytes, value: bytes, flags: int) -> None:
        self._no_caps.discard(node)
        real = self.copy_up(self._node(node).path)
        os.setxattr(real, name, value, flags, follow_symlinks=False)

    def removexattr(self, ctx: Context, node: int, name: bytes) -> None:
        self._no_caps.discard(node)
        real = self._real_of(node)
        os.getxattr(real, name, follow_symlinks=False)  # ENODATA before any copy-up
        real = self.copy_up(self._node(node).path)
        os.removexattr(real, name, follow_symlinks=False)

    # -- directories ---------------------------------------------------------------------------------

    def opendir(self, ctx: Context, node: int, flags: int) -> int:
        n = self._node(node)
        loc, st = self._lstat_path(n.path)
        if not stat.S_ISDIR(loc.mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        parent_ino = st.st_ino
        if n.path:
            _ploc, pst = self._lstat_path(_split(n.path)[0])
            parent_ino = pst.st_ino
        entries = [(b".", st.st_ino, stat.S_IFDIR >> 12), (b"..", parent_ino, stat.S_IFDIR >> 12)]
        entries += self.list_dir(n.path, loc)
        fh = next(self._next_fh)
        self._dir_handles[fh] = entries
        return fh

    def readdir(self, ctx: Context, node: int, fh: int, offset: int) -> Iterator[tuple[bytes, int, int, int]]:
        entries = self._dir_handles.get(fh)
        if entries is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        for index in range(offset, len(entries)):
            name, ino, dtype = entries[index]
            yield name, ino, dtype, index + 1

    def releasedir(self, ctx: Context, node: int, fh: int) -> None:
        self._dir_handles.pop(fh, None)


class _TimesKeeper:
    """Restore a directory's atime/mtime after we add bookkeeping entries to it, so a
    copy-up is invisible in the parent's timestamps (overlayfs does the same)."""

    def __init__(self, real_dir: bytes) -> None:
        self.real_dir = real_dir
        self.st = os.lstat(real_dir)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        os.utime(self.real_dir, ns=(self.st.st_atime_ns, self.st.st_mtime_ns), follow_symlinks=False)
