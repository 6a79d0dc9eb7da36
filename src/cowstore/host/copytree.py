"""Copy a directory tree with everything a root filesystem carries (Docker's DirCopy).

vfs copies a parent layer into every child; legacy overlay hard-links an image's tree
into the next layer. Data goes through copy_file_range, which the kernel turns into a
reflink on btrfs and xfs, so "full copies" cost almost nothing there.
"""

from __future__ import annotations

import errno
import os
import stat

from cowstore.host.fsutil import walk_tree

_CHUNK = 64 * 1024 * 1024


def _copy_data(src: str, dst: str, mode: int) -> None:
    sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode & 0o777)
        try:
            size = os.fstat(sfd).st_size
            offset = 0
            while offset < size:
                try:
                    n = os.copy_file_range(sfd, dfd, min(_CHUNK, size - offset), offset, offset)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    n = _copy_plain(sfd, dfd, offset, size)
                if n == 0:
                    break
                offset += n
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def _copy_plain(sfd: int, dfd: int, offset: int, size: int) -> int:
    copied = 0
    while offset + copied < size:
        data = os.pread(sfd, min(_CHUNK, size - offset - copied), offset + copied)
        if not data:
            break
        os.pwrite(dfd, data, offset + copied)
        copied += len(data)
    return copied


def _copy_xattrs(src: str, dst: str, skip_prefixes: tuple[str, ...]) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if name.startswith(skip_prefixes):
            continue
        try:
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.EOPNOTSUPP):
                raise


def copy_tree(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    hardlink: bool = False,
    skip_xattrs: tuple[str, ...] = (),
) -> None:
    """Copy the contents of `src` into the existing directory `dst`.

    `hardlink=True` links regular files instead of copying them (legacy overlay's image
    layers); xattrs whose names start with one of `skip_xattrs` are not copied.
    Hard-link groups in `src` stay groups in `dst`; times are set last, deepest
    directory first, so creating children does not disturb them.
    """
    src, dst = os.fspath(src), os.fspath(dst)

    links: dict[tuple[int, int], str] = {}
    dir_times: list[tuple[str, os.stat_result]] = []
    for rel, st in walk_tree(src):
        s, d = os.path.join(src, rel), os.path.join(dst, rel)
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFDIR:
            os.mkdir(d, stat.S_IMODE(st.st_mode))
            dir_times.append((d, st))
        elif fmt == stat.S_IFREG:
            key = (st.st_dev, st.st_ino)
            if hardlink:
                os.link(s, d, follow_symlinks=False)
                continue
            if st.st_nlink > 1 and key in links:
                os.link(links[key], d, follow_symlinks=False)
                continue
            links[key] = d
            _copy_data(s, d, st.st_mode)
        elif fmt == stat.S_IFLNK:
            os.symlink(os.readlink(s), d)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            os.mknod(d, st.st_mode, st.st_rdev)
        elif fmt in (stat.S_IFIFO, stat.S_IFSOCK):
            os.mkfifo(d, stat.S_IMODE(st.st_mode))
        os.chown(d, st.st_uid, st.st_gid, follow_symlinks=False)
        _copy_xattrs(s, d, skip_xattrs)
        if fmt != stat.S_IFLNK:
            os.chmod(d, stat.S_IMODE(st.st_mode))
        if fmt != stat.S_IFDIR:
            os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    root_st = os.stat(src)
    os.chown(dst, root_st.st_uid, root_st.st_gid)
    os.chmod(dst, stat.S_IMODE(root_st.st_mode))
    _copy_xattrs(src, dst, skip_xattrs)
    for d, st in reversed(dir_times):
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(dst, ns=(root_st.st_atime_ns, root_st.st_mtime_ns))
