"""Filesystem helpers: backing-filesystem facts, syncfs, tree walks and safe removal.

Removal walks with directory file descriptors and never follows symlinks, and it is
iterative: layers can nest thousands of directories deep, past Python's recursion limit.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pathlib
import resource
import stat
from collections.abc import Callable, Iterable, Iterator
from typing import AnyStr, BinaryIO

from cowstore.host import mounts
from cowstore.host.libc import LIBC, last_error
from cowstore.host.longpath import ShortPaths

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
LIBC.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]

# statfs f_type magics, named the way `docker info` names the backing filesystem.
_FS_NAMES = {
    0xEF53: "extfs",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
    0x794C7630: "overlayfs",
    0x61756673: "aufs",
    0x65735546: "fuse",
    0x2FC12FC1: "zfs",
    0x6969: "nfs",
    0xF15F: "ecryptfs",
    0x73717368: "squashfs",
    0xE0F5E1E2: "erofs",
}


class _Statfs(ctypes.Structure):
    _fields_ = [
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_ulong),
        ("f_bfree", ctypes.c_ulong),
        ("f_bavail", ctypes.c_ulong),
        ("f_files", ctypes.c_ulong),
        ("f_ffree", ctypes.c_ulong),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    ]


def spooled(
    write: Callable[[BinaryIO], None], tmp: str | os.PathLike | None, prefix: str = "spool-", in_memory: int = 0
) -> BinaryIO:
    """What `write` writes, in a private temporary file under `tmp`, read from its start.

    The file is closed (and so gone) if `write` fails. With `in_memory`, up to that many
    bytes stay in memory before the file is made.
    """
    import tempfile  # only the commands that spool pay for it

    directory = os.fspath(tmp) if tmp is not None else None
    out: BinaryIO
    if in_memory:
        out = tempfile.SpooledTemporaryFile(max_size=in_memory, dir=directory, prefix=prefix)  # type: ignore[assignment]
    else:
        out = tempfile.TemporaryFile(dir=directory, prefix=prefix)
    try:
        write(out)
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return out


def statfs_magic(path: str | os.PathLike) -> int:
    """The f_type magic number of the filesystem holding `path`."""
    buf = _Statfs()
    if LIBC.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return buf.f_type & 0xFFFFFFFF


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with its mode flags (os.posix_fallocate has none); OSError on failure."""
    if LIBC.fallocate(fd, mode, offset, length) != 0:
        raise last_error()


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate a byte range so it reads as zeros and takes no space."""
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)


def raise_fd_limit() -> None:
    """Lift the soft limit on open descriptors to the hard limit.

    Layer trees are walked and removed with one directory descriptor per level, and a
    layer may nest about 2000 levels within the 4096-byte path limit: more than the
    usual soft limit of 1024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def kernel_has_fs(name: str) -> bool:
    """Whether /proc/filesystems lists filesystem type `name` (overlay, aufs, fuse...)."""
    try:
        with open("/proc/filesystems", encoding="ascii") as fh:
            return any(line.split()[-1] == name for line in fh if line.strip())
    except OSError:
        return False


def lstat_or_none(path: str | os.PathLike, dir_fd: int | None = None) -> os.stat_result | None:
    """lstat, with a missing entry as None (a common question when comparing trees)."""
    try:
        return os.lstat(path, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None


def syncfs(path: str | os.PathLike) -> None:
    """Flush the one filesystem holding `path` (cheaper than sync(2) on a shared machine).

    Raises the write-back error the filesystem met since the last syncfs (a full disk
    under a thin device shows only here).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        syncfs_fd(fd, path)
    finally:
        os.close(fd)


def syncfs_fd(fd: int, path: str | os.PathLike) -> None:
    """syncfs through a descriptor held open (it reports the write-back errors met since it
    was opened); `path` names the filesystem in the error."""
    if LIBC.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))


def fsync(path: str | os.PathLike) -> None:
    """fsync a file or directory by its path (a directory: its entries, and on a journaled
    filesystem the journal that holds them)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backing_fs(path: str | os.PathLike) -> str:
    """Docker's name for the filesystem holding `path` (`extfs`, `xfs`, `<unknown>`, ...)."""
    return _FS_NAMES.get(statfs_magic(path), "<unknown>")


_SYS_GETDENTS64 = {"x86_64": 217, "aarch64": 61}.get(os.uname().machine, 217)
_DT_UNKNOWN = 0


def supports_d_type(path: str | os.PathLike) -> bool:
    """Whether readdir on `path`'s filesystem reports file types (overlay needs it).

    Reads raw getdents64 records, because os.scandir hides a DT_UNKNOWN behind a stat.
    An entry `path` already holds answers without writing anything (a driver asks at
    every open, also on a full disk); an empty `path` gets a probe file.
    """
    found = _first_d_type(path)
    if found is not None:
        return found != _DT_UNKNOWN
    probe = pathlib.Path(path) / f".d_type-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        (probe / "f").touch()
        found = _first_d_type(probe)
        return found is not None and found != _DT_UNKNOWN
    finally:
        # The probe holds one file: two system calls, not a tree removal that first reads
        # the mount table (which every command opening an overlay store would pay).
        with contextlib.suppress(FileNotFoundError):
            (probe / "f").unlink()
        try:
            probe.rmdir()
        except OSError:
            remove_tree(probe)


def _first_d_type(path: str | os.PathLike) -> int | None:
    """The d_type readdir reports for the first entry of `path` other than . and ..; None if it has none."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        buf = ctypes.create_string_buffer(4096)
        n = LIBC.syscall(_SYS_GETDENTS64, fd, buf, len(buf))
        offset = 0
        while 0 < n and offset < n:
            reclen = int.from_bytes(buf.raw[offset + 16 : offset + 18], "little")
            name = buf.raw[offset + 19 : offset + reclen].split(b"\0", 1)[0]
            if name not in (b".", b".."):
                return buf.raw[offset + 18]
            offset += reclen
        return None
    finally:
        os.close(fd)


def _open_dir_nofollow(name: str, dir_fd: int) -> int | None:
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None


def empty_dir(top_fd: int) -> None:
    """Delete everything inside the directory open at `top_fd`, never following symlinks.

    Iterative, with one open descriptor per level of the directory being descended.
    """
    stack: list[tuple[int, str, list[str]]] = [(top_fd, "", os.listdir(top_fd))]
    try:
        while stack:
            fd, name_in_parent, names = stack[-1]
            if names:
                name = names.pop()
                try:
                    st = os.lstat(name, dir_fd=fd)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    child = _open_dir_nofollow(name, fd)
                    if child is not None:
                        stack.append((child, name, os.listdir(child)))
                    continue
                try:
                    os.unlink(name, dir_fd=fd)
                except FileNotFoundError:
                    pass
                continue
            stack.pop()
            if stack:
                os.close(fd)
                try:
                    os.rmdir(name_in_parent, dir_fd=stack[-1][0])
                except FileNotFoundError:
                    pass
    finally:
        for fd, _, _ in stack[1:]:
            os.close(fd)


def remove_tree(path: str | os.PathLike, *, unmount: bool = True) -> None:
    """Remove `path` and everything below it; unmount what is mounted there first.

    A missing path is fine: removal races with other removers by design. A caller that
    knows nothing is mounted below passes `unmount=False`, sparing a read of the whole
    mount table (thousands of lines on a busy host).
    """
    path = os.fspath(path)
    for point in mounts.mounts_under(path) if unmount else []:
        mounts.umount(point, mounts.MNT_DETACH)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        empty_dir(fd)
    finally:
        os.close(fd)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def unique_size(stats: Iterable[os.stat_result]) -> int:
    """Bytes of the non-directories among `stats`, each hard-linked inode counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for st in stats:
        if stat.S_ISDIR(st.st_mode):
            continue
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
        total += st.st_size
    return total


def tree_size(path: str | os.PathLike[str]) -> int:
    """Bytes of regular files below `path`, each hard-linked inode counted once."""
    return unique_size(st for _, st in walk_tree(os.fspath(path)))


def walk(root: AnyStr) -> Iterator[tuple[AnyStr, list[AnyStr], list[AnyStr]]]:
    """os.walk (top-down; prune by editing dirnames) without recursion, for trees of any depth.

    Python's own os.walk recurses once per level and fails past ~1,000 nested directories,
    a depth any hostile layer reaches.
    """
    stack = [root]
    while stack:
        top = stack.pop()
        dirs: list[AnyStr] = []
        files: list[AnyStr] = []
        try:
            with os.scandir(top) as it:
                for entry in it:
                    (dirs if entry.is_dir(follow_symlinks=False) else files).append(entry.name)
        except OSError:
            continue
        yield top, dirs, files
        stack.extend(os.path.join(top, name) for name in reversed(dirs))


def walk_tree(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """Pre-order walk (a directory, then its contents) in lexical order, iteratively.

    Yields (path relative to `root`, lstat); `root` itself is not yielded.
    """
    stack: list[list[str]] = [[""]]
    first = True
    with ShortPaths() as short:
        while stack:
            level = stack[-1]
            if not level:
                stack.pop()
                continue
            rel_dir = level.pop(0)
            if first:
                first = False
            else:
                st = os.lstat(short.path(root, rel_dir))
                yield rel_dir, st
                if not stat.S_ISDIR(st.st_mode):
                    continue
            names = sorted(os.listdir(short.path(root, rel_dir)))
            children = [f"{rel_dir}/{n}" if rel_dir else n for n in names]
            if children:
                stack.append(children)
