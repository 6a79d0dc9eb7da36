"""Copy-up and whiteouts: every change the union makes to branch 0 on its own.

A write to a lower file first copies it (and its parent directories) up; deleting a
lower name leaves a `.wh.<name>` file; a directory that replaces a hidden lower one
gets an opaque marker. Copies are made under a temporary name and renamed into place,
so a crash never leaves a half-copied file under the real name, and the parent's
times are restored afterwards, so a copy-up does not show as a change of the parent.

Data moves with copy_file_range over the source's data extents only (SEEK_DATA /
SEEK_HOLE), so sparse files stay sparse and reflink filesystems (xfs, btrfs) share
extents instead of copying: first-write latency is then independent of the file size.
Ownership is set before the mode because chown clears setuid/setgid bits.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator

from cowstore.archive.whiteouts import META_PREFIX_BYTES, OPAQUE_MARKER_BYTES, WHITEOUT_PREFIX_BYTES
from cowstore.drivers.aufs.unionfs.branches import whiteout
from cowstore.drivers.aufs.unionfs.resolve import Loc, Resolver, join, lexists, lstat_or_none, split
from cowstore.host.fsutil import walk

_CHUNK = 1 << 30
_TMP_PREFIX = META_PREFIX_BYTES + b"tmp."


def copy_data(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy the data extents of `src_fd` into `dst_fd` and give it length `size`."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src_fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole remains
                break
            raise
        end = os.lseek(src_fd, start, os.SEEK_HOLE)
        pos = start
        while pos < end:
            done = os.copy_file_range(src_fd, dst_fd, min(end - pos, _CHUNK), pos, pos)
            if done == 0:
                break
            pos += done
        offset = end
    os.ftruncate(dst_fd, size)


def copy_xattrs(src: bytes, dst: bytes) -> None:
    """Copy every extended attribute the destination filesystem accepts."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for name in names:
        try:
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                raise


def copy_metadata(src: bytes, dst: bytes, st: os.stat_result) -> None:
    """Owner, xattrs, mode and times of `src` (lstat `st`) onto `dst`, in the order that
    keeps them: chown drops security.capability and setuid bits, so it goes first."""
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    copy_xattrs(src, dst)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_node(src: bytes, dst: bytes, st: os.stat_result, *, data: bool = True) -> None:
    """Create `dst` as a copy of the non-directory `src` (whose lstat is `st`).

    With data=False a regular file is created empty (open with O_TRUNC needs no data).
    """
    mode = st.st_mode
    if stat.S_ISREG(mode):
        src_fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                if data:
                    copy_data(src_fd, dst_fd, st.st_size)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISDIR(mode):
        os.mkdir(dst, 0o700)
    else:
        os.mknod(dst, mode, st.st_rdev)
    copy_metadata(src, dst, st)


@contextlib.contextmanager
def kept_times(real_dir: bytes) -> Iterator[None]:
    """Restore a directory's atime/mtime after bookkeeping entries were added to it, so
    a copy-up is invisible in the parent's timestamps (overlayfs does the same)."""
    st = os.lstat(real_dir)
    try:
        yield
    finally:
        os.utime(real_dir, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def mark_opaque(real_dir: bytes) -> None:
    """Hide every lower entry below the branch-0 directory `real_dir`."""
    os.close(os.open(real_dir + b"/" + OPAQUE_MARKER_BYTES, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))


class Upper:
    """Changes to branch 0 on behalf of the union; keeps the resolver's cache in step."""

    def __init__(self, paths: Resolver) -> None:
        self.paths = paths
        self._link_index: dict[int, dict[int, list[bytes]]] = {}

    def dir(self, path: bytes) -> bytes:
        """Make sure directory `path` exists in branch 0 (copying up its ancestors)."""
        loc = self.paths.need(path)
        if loc.dirs and loc.dirs[0] == 0:
            return self.paths.real(0, path)
        if not stat.S_ISDIR(loc.mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        parent, _ = split(path)
        parent_real = self.dir(parent)
        src = self.paths.real(loc.branch, path)
        dst = self.paths.real(0, path)
        with kept_times(parent_real):
            copy_node(src, dst, os.lstat(src))
        loc.dirs.insert(0, 0)
        loc.branch = 0
        return dst

    def copy_up(self, path: bytes, *, data: bool = True) -> bytes:
        """Bring `path` into branch 0; returns its real path there.

        With data=False a regular file is created empty (for an open with O_TRUNC).
        """
        loc = self.paths.need(path)
        if loc.branch == 0:
            return self.paths.real(0, path)
        if stat.S_ISDIR(loc.mode):
            return self.dir(path)
        parent, name = split(path)
        parent_real = self.dir(parent)
        src = self.paths.real(loc.branch, path)
        dst = self.paths.real(0, path)
        st = os.lstat(src)
        branch = loc.branch
        tmp = parent_real + b"/" + _TMP_PREFIX + name[:200]
        with kept_times(parent_real):
            try:
                copy_node(src, tmp, st, data=data)
                os.rename(tmp, dst)
            except BaseException:
                if lexists(tmp):
                    os.unlink(tmp)
                raise
        loc.branch = 0
        if st.st_nlink > 1:
            self._copy_up_links(path, st, branch)
        return dst

    def _copy_up_links(self, path: bytes, st: os.stat_result, branch: int) -> None:
        """Keep a hard-link group whole: link every other visible name of the lower
        inode to the new upper copy, so changes show under all names and the diff
        carries them as tar hard links."""
        members = self._links_in(branch).get(st.st_ino, [])
        upper = self.paths.real(0, path)
        for other in members:
            if other == path:
                continue
            loc = self.paths.locate(other)
            if loc is None or loc.branch != branch:
                continue
            ost = lstat_or_none(self.paths.real(branch, other))
            if ost is None or ost.st_ino != st.st_ino:
                continue
            parent, _ = split(other)
            parent_real = self.dir(parent)
            with kept_times(parent_real):
                os.link(upper, self.paths.real(0, other))
            loc.branch = 0

    def _links_in(self, branch: int) -> dict[int, list[bytes]]:
        """inode -> union paths of multiply-linked files in a branch (built once)."""
        index = self._link_index.get(branch)
        if index is None:
            index = {}
            root = self.paths.branches[branch].path
            for dirpath, _dirnames, filenames in walk(root):
                rel = os.path.relpath(dirpath, root)
                rel = b"" if rel == b"." else rel
                for name in filenames:
                    st = lstat_or_none(dirpath + b"/" + name)
                    if st is not None and st.st_nlink > 1:
                        index.setdefault(st.st_ino, []).append(join(rel, name))
            self._link_index[branch] = index
        return index

    def prepare_create(self, path: bytes) -> bytes:
        """Ready branch 0 for a new entry at `path`: parent copied up, whiteout gone.
        Returns the real path; `path` must not exist in the union."""
        if self.paths.locate(path) is not None:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        parent, name = split(path)
        parent_real = self.dir(parent)
        wh = parent_real + b"/" + whiteout(name)
        if lexists(wh):
            os.unlink(wh)
        self.paths.forget(path, subtree=True)
        return parent_real + b"/" + name

    def whiteout(self, parent: bytes, name: bytes) -> None:
        """Hide `name` of the lower branches (a `.wh.<name>` file in branch 0)."""
        parent_real = self.dir(parent)
        os.close(os.open(parent_real + b"/" + whiteout(name), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))

    def delete(self, path: bytes, loc: Loc) -> None:
        """Remove `path` from the union: its branch-0 entry goes, a lower one is whited out."""
        parent, name = split(path)
        directory = stat.S_ISDIR(loc.mode)
        if directory and loc.dirs and loc.dirs[0] == 0:
            real = self.paths.real(0, path)
            _clear_dir(real)
            os.rmdir(real)
        elif not directory and loc.branch == 0:
            os.unlink(self.paths.real(0, path))
        if self.paths.lower_exists(parent, name):
            self.whiteout(parent, name)
        self.paths.forget(path, subtree=directory)

    def rename(self, src: bytes, sloc: Loc, dst: bytes, dloc: Loc | None) -> None:
        """Move union path `src` to `dst` (checked by the caller; `dst` may exist).

        A directory merged from several branches is materialised as one opaque copy at
        the new name, as aufs does, since a lower branch cannot be renamed.
        """
        src_parent, name = split(src)
        dst_parent, new_name = split(dst)
        src_dir = stat.S_ISDIR(sloc.mode)
        dst_parent_real = self.dir(dst_parent)
        merged = src_dir and (sloc.branch != 0 or any(i != 0 for i in sloc.dirs))
        if merged:
            source = dst_parent_real + b"/" + _TMP_PREFIX + new_name[:200]
            self._copy_tree(src, sloc, source)
        else:
            source = self.copy_up(src)
        dst_real = dst_parent_real + b"/" + new_name
        if dloc is not None and stat.S_ISDIR(dloc.mode) and dloc.dirs and dloc.dirs[0] == 0:
            _clear_dir(dst_real)
        wh = dst_parent_real + b"/" + whiteout(new_name)
        if lexists(wh):
            os.unlink(wh)
        if src_dir and not merged and self.paths.lower_exists(dst_parent, new_name):
            mark_opaque(source)
        os.rename(source, dst_real)
        if merged and lexists(self.paths.real(0, src)):
            _remove_tree(self.paths.real(0, src))
        self.paths.forget(src, subtree=True)
        self.paths.forget(dst, subtree=True)
        if self.paths.lower_exists(src_parent, name):
            self.whiteout(src_parent, name)

    def _copy_tree(self, path: bytes, loc: Loc, dst: bytes) -> None:
        """Materialise the merged view of directory `path` at real path `dst` (opaque)."""
        stack = [(path, loc, dst)]
        while stack:
            upath, uloc, target = stack.pop()
            src_dir = self.paths.real(uloc.branch, upath)
            copy_node(src_dir, target, os.lstat(src_dir))
            if target == dst:  # lower entries at the new name must stay hidden
                mark_opaque(target)
            for name, _, _ in self.paths.list_dir(upath, uloc):
                child = join(upath, name)
                cloc = self.paths.need(child)
                if stat.S_ISDIR(cloc.mode):
                    stack.append((child, cloc, target + b"/" + name))
                    continue
                real = self.paths.real(cloc.branch, child)
                st = os.lstat(real)
                if cloc.branch == 0 or st.st_nlink > 1:
                    # keep the inode (and any hard links outside the tree): link, not copy
                    os.link(self.copy_up(child), target + b"/" + name)
                else:
                    copy_node(real, target + b"/" + name, st)
            src_st = os.lstat(src_dir)
            os.utime(target, ns=(src_st.st_atime_ns, src_st.st_mtime_ns))


def _clear_dir(real_dir: bytes) -> None:
    """Remove the whiteouts and markers left in an upper dir that is empty in the union."""
    with os.scandir(real_dir) as it:
        for entry in it:
            if entry.name.startswith(WHITEOUT_PREFIX_BYTES):
                os.unlink(entry.path)


def _remove_tree(root: bytes) -> None:
    for dirpath, dirnames, filenames in reversed(list(walk(root))):
        for name in filenames:
            os.unlink(dirpath + b"/" + name)
        for name in dirnames:
            full = dirpath + b"/" + name
            if os.path.islink(full):
                os.unlink(full)
            else:
                os.rmdir(full)
    os.rmdir(root)
