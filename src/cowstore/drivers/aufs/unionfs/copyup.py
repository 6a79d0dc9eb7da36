"""Copying one filesystem object from a lower branch to the top branch.

Data moves with copy_file_range over the source's data extents only (SEEK_DATA /
SEEK_HOLE), so sparse files stay sparse and reflink filesystems (xfs, btrfs) share
extents instead of copying: first-write latency is then independent of the file size.
Ownership is set before the mode because chown clears setuid/setgid bits.
"""

from __future__ import annotations

import errno
import os
import stat

_CHUNK = 1 << 30


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
