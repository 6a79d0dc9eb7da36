"""Output files created beneath a directory descriptor, never through a planted link.

`save -o F` run as root in a directory (or /tmp) that others can write must not let them
choose what gets overwritten. So a temporary is never a predictable name opened with a
plain open(): it is a fresh name created with O_CREAT|O_EXCL|O_NOFOLLOW relative to the
output directory's descriptor, and it replaces F with renameat in that same directory.
A target that is not a regular file (a device node, a FIFO) is written in place, like a
shell redirection, because renaming over it would replace the node itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

from cowstore.errors import AlreadyExists, InvalidArgument

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def create_exclusive(dir_fd: int, name: str, mode: int = 0o644) -> int:
    """A new file `name` in the directory `dir_fd`; fails if anything (a link too) has that name."""
    try:
        return os.open(name, _CREATE, mode, dir_fd=dir_fd)
    except FileExistsError:
        raise AlreadyExists(f"{name} appeared while writing (something else writes into this directory)") from None


def create_temporary(dir_fd: int, prefix: str, mode: int = 0o644) -> tuple[int, str]:
    """A new uniquely named file in `dir_fd`: (descriptor, name); the name cannot be guessed."""
    for _ in range(100):
        name = f"{prefix}{os.urandom(8).hex()}.partial"
        try:
            return os.open(name, _CREATE, mode, dir_fd=dir_fd), name
        except FileExistsError:
            continue
    raise AlreadyExists(f"could not create a temporary file named {prefix}*.partial")


def open_subdir(dir_fd: int, name: str, *, create: bool = False) -> int:
    """A descriptor of the directory `name` below `dir_fd`, never following a symlink on the way."""
    fd = os.dup(dir_fd)
    try:
        for part in [p for p in name.split("/") if p not in ("", ".")]:
            if part == "..":
                raise InvalidArgument(f"'..' in {name!r}")
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise AlreadyExists(f"{name}: {part} is not a directory (something else writes here)") from None
                raise
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _owner_trusted(st: os.stat_result) -> bool:
    """Symlinks we follow as the last component: the caller's own or root's (as fs.protected_symlinks)."""
    return st.st_uid in (0, os.geteuid())


@contextlib.contextmanager
def output_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content into; it becomes `path` only when the block succeeds.

    A regular file (or a new name) is replaced atomically through an unguessable temporary.
    A device node or FIFO is written in place. A symlink is followed only if it belongs to
    the caller or root (then written through in place); a directory or a stranger's symlink
    is refused.
    """
    parent, name = os.path.split(os.fspath(path))
    if not name or name in (".", ".."):
        raise InvalidArgument(f"{os.fspath(path)!r} names a directory, not a file")
    dir_fd = os.open(parent or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            st: os.stat_result | None = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            st = None
        if st is None or stat.S_ISREG(st.st_mode):
            yield from _replace(dir_fd, name)
            return
        if stat.S_ISDIR(st.st_mode):
            raise InvalidArgument(f"{os.fspath(path)} is a directory")
        flags = os.O_WRONLY | os.O_CLOEXEC
        if stat.S_ISLNK(st.st_mode):
            if not _owner_trusted(st):
                raise InvalidArgument(f"{os.fspath(path)} is a symlink owned by uid {st.st_uid}; not following it")
            flags |= os.O_TRUNC
        else:
            flags |= os.O_NOFOLLOW
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        except IsADirectoryError:
            raise InvalidArgument(f"{os.fspath(path)} leads to a directory") from None
        except OSError as exc:
            if exc.errno in (errno.ENXIO, errno.ELOOP):
                raise InvalidArgument(f"cannot write to {os.fspath(path)}: {exc.strerror}") from None
            raise
        with os.fdopen(fd, "wb") as out:
            yield out
    finally:
        os.close(dir_fd)


def _replace(dir_fd: int, name: str) -> Iterator[BinaryIO]:
    fd, tmp = create_temporary(dir_fd, f".{name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
