"""Copy files into and out of a container's root filesystem (`docker cp`).

Paths inside the container are resolved as the container sees them: with openat2
RESOLVE_IN_ROOT, each open re-resolved from the container root, and every entry below
a copied directory opened relative to its parent's descriptor without following
symlinks. A container that swaps a directory for a symlink while the copy runs
(CVE-2018-15664) can therefore only redirect the copy within its own root, never to a
host file.

The host side of a copy out is walked the same way. The directory that receives the
copy (the destination if it is a directory, else its parent) is the user's choice and
may be reached through symlinks, as with cp(1); every name created in it and below it
is made relative to its parent directory's descriptor and never through a symlink: an
earlier copy may have left a container-supplied symlink (`x -> /etc`) on the host, and
a later copy of a real directory `x/` must not write through it. Such a symlink, or any
other non-directory where a directory, file or symlink must go, is replaced (unlinked
first, as `docker cp` and `tar` do; the link's target is untouched); a host directory
where a file or symlink must go is refused with CopyError.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import stat

from cowstore.errors import InvalidArgument, NotFound
from cowstore.host.fsutil import lstat_or_none
from cowstore.host.safepath import Root

_CHUNK = 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a file the container swaps for a FIFO after our lstat must not hang the copy.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class CopyError(InvalidArgument):
    """A copy into or out of a container could not be done."""


class CopySourceNotFound(NotFound):
    """The path to copy does not exist in the container."""


def _copy_fd(src: int, dst: int) -> None:
    while chunk := os.read(src, _CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]


def _copy_meta(st: os.stat_result, fd: int) -> None:
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def copy_out(container_root: pathlib.Path, path: str, dest: pathlib.Path) -> None:
    """Copy `path` (as the container sees it; symlinks resolve inside the container) to `dest`.

    An existing directory `dest` receives the copy under the source's own name;
    otherwise `dest` itself becomes the copy.
    """
    with Root(container_root) as root:
        try:
            src = root.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise CopySourceNotFound(f"no such file or directory in the container: {path}") from None
        except OSError as exc:
            raise CopyError(f"cannot read {path} in the container: {exc.strerror}") from None
        try:
            st = os.fstat(src)
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise CopyError(f"{path} is neither a file nor a directory")
            if dest.is_dir():
                parent_dir, name = dest, os.path.basename(path.rstrip("/"))
                if name in (".", ".."):
                    name = ""  # `/` itself, `/a/.` or `/a/..`: copy the contents into dest
            else:
                parent_dir, name = dest.parent, dest.name
            try:
                parent = os.open(parent_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise CopyError(f"cannot write to {parent_dir}: {exc.strerror}") from None
            try:
                if stat.S_ISDIR(st.st_mode):
                    top = _host_dir(parent, name, st, str(parent_dir)) if name else os.dup(parent)
                    try:
                        _copy_dir_out(src, top, str(parent_dir / name) if name else str(parent_dir))
                    finally:
                        os.close(top)
                elif not name:
                    raise CopyError(f"cannot copy the file {path} over the directory {dest}")
                else:
                    _host_file(parent, name, st, src, str(parent_dir))
            finally:
                os.close(parent)
        finally:
            os.close(src)


def _host_dir(parent_fd: int, name: str, st: os.stat_result, where: str) -> int:
    """Open (creating it if needed) host directory `name` below `parent_fd`, never via a symlink."""
    mode = stat.S_IMODE(st.st_mode) | 0o700
    existing = lstat_or_none(name, dir_fd=parent_fd)
    if existing is not None and not stat.S_ISDIR(existing.st_mode):
        os.unlink(name, dir_fd=parent_fd)  # e.g. a symlink from an earlier copy: replace, never follow
        existing = None
    if existing is None:
        try:
            os.mkdir(name, mode, dir_fd=parent_fd)
        except FileExistsError:
            pass  # created meanwhile: the O_NOFOLLOW open below decides whether it is usable
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:  # ELOOP/ENOTDIR: something other than a directory appeared there
        raise CopyError(f"cannot copy into {where}/{name}: {exc.strerror}") from None


def _host_file(parent_fd: int, name: str, st: os.stat_result, src_fd: int, where: str) -> None:
    """Write the container file open at `src_fd` as host file `name`, replacing any non-directory."""
    _make_room(parent_fd, name, where)
    try:
        dst = os.open(name, _CREATE_FLAGS, 0o600, dir_fd=parent_fd)
    except OSError as exc:
        raise CopyError(f"cannot create {where}/{name}: {exc.strerror}") from None
    try:
        _copy_fd(src_fd, dst)
        _copy_meta(st, dst)
    finally:
        os.close(dst)


def _make_room(parent_fd: int, name: str, where: str) -> None:
    """Remove a non-directory `name` (a file or symlink is replaced, not written through)."""
    existing = lstat_or_none(name, dir_fd=parent_fd)
    if existing is None:
        return
    if stat.S_ISDIR(existing.st_mode):
        raise CopyError(f"cannot overwrite the directory {where}/{name} with a non-directory")
    os.unlink(name, dir_fd=parent_fd)


def _copy_dir_out(top_src: int, top_dst: int, where: str) -> None:
    """Copy the container directory open at `top_src` into the host directory open at `top_dst`.

    Both sides are walked by descriptor: each child is opened relative to its parent
    with O_NOFOLLOW, so neither a container symlink nor a host symlink is ever followed.
    """
    stack: list[tuple[int, int, str]] = []
    try:
        src = os.dup(top_src)
        try:
            stack.append((src, os.dup(top_dst), where))
        except BaseException:
            os.close(src)
            raise
        while stack:
            src_fd, dst_fd, here = stack.pop()
            try:
                _copy_entries_out(src_fd, dst_fd, here, stack)
            finally:
                os.close(src_fd)
                os.close(dst_fd)
    finally:
        for src_fd, dst_fd, _ in stack:
            os.close(src_fd)
            os.close(dst_fd)


def _open_source(name: str, dir_fd: int, flags: int, what: str) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        raise CopyError(f"cannot read the container {what}: {exc.strerror}") from None


def _copy_entries_out(src_fd: int, dst_fd: int, where: str, stack: list[tuple[int, int, str]]) -> None:
    """Copy the files and symlinks of one directory; push its subdirectories onto `stack`."""
    for name in os.listdir(src_fd):
        st = lstat_or_none(name, dir_fd=src_fd)
        if st is None:
            continue  # removed by the container meanwhile
        if stat.S_ISDIR(st.st_mode):
            child = _open_source(name, src_fd, _DIR_FLAGS, f"directory copied to {where}/{name}")
            try:
                stack.append((child, _host_dir(dst_fd, name, st, where), f"{where}/{name}"))
            except BaseException:
                os.close(child)
                raise
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=src_fd)
            _make_room(dst_fd, name, where)
            os.symlink(target, name, dir_fd=dst_fd)
        elif stat.S_ISREG(st.st_mode):
            src = _open_source(name, src_fd, _FILE_FLAGS, f"file copied to {where}/{name}")
            try:
                now = os.fstat(src)
                if not stat.S_ISREG(now.st_mode):
                    raise CopyError(f"the container file copied to {where}/{name} changed while it was copied")
                _host_file(dst_fd, name, now, src, where)
            finally:
                os.close(src)


def copy_in(source: pathlib.Path, container_root: pathlib.Path, path: str) -> None:
    """Copy host file or directory `source` to `path` inside the container.

    As with `docker cp`, an existing directory at `path` receives `source` under its
    own name; symlinks on the way resolve inside the container.
    """
    if not source.exists():
        raise CopyError(f"{source} does not exist")
    with Root(container_root) as root:
        parent_rel, _, name = path.rstrip("/").rpartition("/")
        if name in (".", ".."):  # resolve `/a/..` in the root, never `..` from a descriptor
            parent_rel, name = path, ""
        try:
            parent = root.open_dir(parent_rel)
        except OSError as exc:
            raise CopyError(f"cannot reach {parent_rel or '/'} in the container: {exc.strerror}") from None
        try:
            existing = lstat_or_none(name, parent) if name else os.stat(parent)
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                into = os.open(name or ".", _DIR_FLAGS, dir_fd=parent)
                os.close(parent)
                parent, name = into, source.name
            if source.is_dir():
                _copy_dir_in(source, parent, name)
            else:
                _copy_file_in(source, parent, name)
        finally:
            os.close(parent)


def _copy_file_in(source: pathlib.Path, parent_fd: int, name: str) -> None:
    # A host device or FIFO would be read forever (/dev/zero fills the disk) or block:
    # only regular files are copied, checked on the descriptor that is read.
    src_fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(src_fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(src_fd)
        raise CopyError(f"{source} is neither a file nor a directory")
    existing = lstat_or_none(name, parent_fd)
    if existing is not None and not stat.S_ISDIR(existing.st_mode):
        os.unlink(name, dir_fd=parent_fd)  # replace, never write through a symlink or hard link
    with os.fdopen(src_fd, "rb") as src:
        dst = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent_fd
        )
        try:
            _copy_fd(src.fileno(), dst)
            _copy_meta(st, dst)
            os.fsync(dst)  # on a thin device a full disk shows only at writeback: see it here
        except BaseException:  # a full disk: leave no partial file in the container
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=parent_fd)
            raise
        finally:
            os.close(dst)


def _copy_dir_in(source: pathlib.Path, parent_fd: int, name: str) -> None:
    """Copy host directory `source` as `name` below the container directory open at `parent_fd`."""
    stack: list[tuple[pathlib.Path, int, str]] = [(source, os.dup(parent_fd), name)]
    try:
        while stack:
            src_dir, pfd, dname = stack.pop()
            try:
                existing = lstat_or_none(dname, pfd)
                if existing is not None and not stat.S_ISDIR(existing.st_mode):
                    os.unlink(dname, dir_fd=pfd)
                    existing = None
                if existing is None:
                    os.mkdir(dname, stat.S_IMODE(os.stat(src_dir).st_mode), dir_fd=pfd)
                fd = os.open(dname, _DIR_FLAGS, dir_fd=pfd)
            finally:
                os.close(pfd)
            try:
                with os.scandir(src_dir) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append((pathlib.Path(entry.path), os.dup(fd), entry.name))
                        elif entry.is_symlink():
                            if lstat_or_none(entry.name, fd) is not None:
                                os.unlink(entry.name, dir_fd=fd)
                            os.symlink(os.readlink(entry.path), entry.name, dir_fd=fd)
                        elif entry.is_file(follow_symlinks=False):
                            _copy_file_in(pathlib.Path(entry.path), fd, entry.name)
            finally:
                os.close(fd)
    finally:
        for _, pfd, _ in stack:
            os.close(pfd)
