"""Resolve paths inside a root directory the way a chroot would, with openat2(2).

Every path from a layer tar is resolved with RESOLVE_IN_ROOT: `..`, absolute names and
symlinks (absolute or relative) are all interpreted as if the root were `/`, so no
name in a hostile tar can reach a file outside the layer. This replaces moby's
pivot_root helper and does not depend on tarfile's (bypassable) extraction filters.
"""

from __future__ import annotations

import ctypes
import errno
import os

from cowstore.errors import NotSupported
from cowstore.host.libc import LIBC

_SYS_OPENAT2 = 437  # the same number on x86_64 and aarch64 (unified syscall table)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """The openat2 syscall; raises OSError with the kernel's errno."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd = LIBC.syscall(_SYS_OPENAT2, dir_fd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        if err == errno.ENOSYS:
            raise NotSupported("openat2(2) is required (Linux 5.6 or newer)")
        raise OSError(err, os.strerror(err), path)
    return fd


def lstat_beneath(root: str | os.PathLike, rel: str) -> os.stat_result | None:
    """lstat of `rel` below `root` without following any symlink on the way (None if absent).

    Comparing two trees by name must not let a symlinked directory in one of them
    (possibly from a hostile layer) send a lookup elsewhere, least of all to the host.
    """
    parent, _, name = rel.strip("/").rpartition("/")
    if not name:
        return os.lstat(root)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = openat2(root_fd, parent or ".", os.O_PATH | os.O_DIRECTORY, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise
    finally:
        os.close(root_fd)
    try:
        return os.lstat(name, dir_fd=fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    finally:
        os.close(fd)


_ONE_CALL = 3072


def split_pieces(rel: str, piece: int = 2048) -> list[str]:
    """`rel` cut at slashes into pieces of at most about `piece` bytes (names are at most 255)."""
    pieces = []
    while len(rel) > piece:
        cut = rel.rfind("/", 0, piece)
        if cut <= 0:
            break
        pieces.append(rel[:cut])
        rel = rel[cut + 1 :]
    pieces.append(rel)
    return pieces


def descend(fd: int, pieces: list[str]) -> int:
    """The directory reached by opening each piece below the last, no symlink followed; consumes `fd`."""
    try:
        for piece in pieces:
            nxt = openat2(fd, piece, os.O_PATH | os.O_DIRECTORY, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


class Root:
    """A directory in which relative and absolute names resolve as under chroot."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self.fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_dir(self, rel: str) -> int:
        """An O_PATH descriptor of directory `rel`, resolved in the root (symlinks followed inside).

        A `rel` longer than the kernel takes in one call (a tree nested past PATH_MAX) is
        resolved piece by piece; past the first piece no symlink is followed at all.
        """
        rel = rel.strip("/") or "."
        if len(rel) <= _ONE_CALL:
            return openat2(self.fd, rel, os.O_PATH | os.O_DIRECTORY, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        first, *rest = split_pieces(rel)
        fd = openat2(self.fd, first, os.O_PATH | os.O_DIRECTORY, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        return descend(fd, rest)

    def open(self, rel: str, flags: int, mode: int = 0) -> int:
        """Open `rel` in the root; the last component is followed only if flags lack O_NOFOLLOW."""
        rel = rel.strip("/") or "."
        return openat2(self.fd, rel, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS, mode)

    def make_dirs(self, rel: str, mode: int = 0o755) -> int:
        """Open directory `rel`, creating missing components inside the root; returns an O_PATH fd."""
        rel = rel.strip("/")
        try:
            return self.open_dir(rel)
        except FileNotFoundError:
            pass
        fd = os.dup(self.fd)
        prefix = ""
        try:
            for part in [p for p in rel.split("/") if p not in ("", ".")]:
                if part == "..":
                    raise OSError(errno.EINVAL, "'..' in a directory to create", rel)
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                except FileExistsError:
                    pass
                # Re-resolve from the root so an existing symlink component stays inside it.
                prefix = f"{prefix}/{part}"
                nxt = self.open_dir(prefix)
                os.close(fd)
                fd = nxt
            return fd
        except BaseException:
            os.close(fd)
            raise
