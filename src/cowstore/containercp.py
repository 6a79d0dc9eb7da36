"""Copy files into and out of a container's root filesystem (`docker cp`).

Paths inside the container are resolved as the container sees them: with openat2
RESOLVE_IN_ROOT, each open re-resolved from the container root, and every entry below
a copied directory opened relative to its parent's descriptor without following
symlinks. A container that swaps a directory for a symlink while the copy runs
(CVE-2018-15664) can therefore only redirect the copy within its own root, never to a
host file.
"""

from __future__ import annotations

import os
import pathlib
import stat

from cowstore.errors import CowstoreError
from cowstore.safepath import Root

_CHUNK = 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class CopyError(CowstoreError):
    """A copy into or out of a container could not be done."""


def _copy_fd(src: int, dst: int) -> None:
    while chunk := os.read(src, _CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]


def _copy_meta(st: os.stat_result, fd: int) -> None:
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def copy_out(container_root: pathlib.Path, path: str, dest: pathlib.Path) -> None:
    """Copy `path` (as the container sees it; symlinks resolve inside the container) to `dest`."""
    with Root(container_root) as root:
        try:
            src = root.open(path, os.O_RDONLY)
        except OSError as exc:
            raise CopyError(f"cannot read {path} in the container: {exc.strerror}") from None
        try:
            st = os.fstat(src)
            target = dest / os.path.basename(path.rstrip("/")) if dest.is_dir() else dest
            if stat.S_ISDIR(st.st_mode):
                target.mkdir(exist_ok=True)
                _copy_dir_out(src, target)
            elif stat.S_ISREG(st.st_mode):
                with open(target, "wb") as out:
                    _copy_fd(src, out.fileno())
                    _copy_meta(st, out.fileno())
            else:
                raise CopyError(f"{path} is neither a file nor a directory")
        finally:
            os.close(src)


def _copy_dir_out(top_fd: int, top: pathlib.Path) -> None:
    """Copy the directory open at `top_fd` into host directory `top`, descriptor by descriptor."""
    stack: list[tuple[int, pathlib.Path]] = [(os.dup(top_fd), top)]
    while stack:
        fd, target = stack.pop()
        try:
            for name in os.listdir(fd):
                st = os.lstat(name, dir_fd=fd)
                out = target / name
                if stat.S_ISDIR(st.st_mode):
                    out.mkdir(stat.S_IMODE(st.st_mode) | 0o700, exist_ok=True)
                    stack.append((os.open(name, _DIR_FLAGS, dir_fd=fd), out))
                elif stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(name, dir_fd=fd), out)
                elif stat.S_ISREG(st.st_mode):
                    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                    try:
                        dst = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                        try:
                            _copy_fd(src, dst)
                            _copy_meta(st, dst)
                        finally:
                            os.close(dst)
                    finally:
                        os.close(src)
        finally:
            os.close(fd)


def copy_in(source: pathlib.Path, container_root: pathlib.Path, path: str) -> None:
    """Copy host file or directory `source` to `path` inside the container.

    As with `docker cp`, an existing directory at `path` receives `source` under its
    own name; symlinks on the way resolve inside the container.
    """
    if not source.exists():
        raise CopyError(f"{source} does not exist")
    with Root(container_root) as root:
        parent_rel, _, name = path.rstrip("/").rpartition("/")
        try:
            parent = root.open_dir(parent_rel)
        except OSError as exc:
            raise CopyError(f"cannot reach {parent_rel or '/'} in the container: {exc.strerror}") from None
        try:
            existing = _lstat(name, parent) if name else os.stat(parent)
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


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def _copy_file_in(source: pathlib.Path, parent_fd: int, name: str) -> None:
    existing = _lstat(name, parent_fd)
    if existing is not None and not stat.S_ISDIR(existing.st_mode):
        os.unlink(name, dir_fd=parent_fd)  # replace, never write through a symlink or hard link
    st = os.stat(source)
    with open(source, "rb") as src:
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent_fd)
        try:
            _copy_fd(src.fileno(), dst)
            _copy_meta(st, dst)
        finally:
            os.close(dst)


def _copy_dir_in(source: pathlib.Path, parent_fd: int, name: str) -> None:
    stack: list[tuple[pathlib.Path, int, str]] = [(source, os.dup(parent_fd), name)]
    while stack:
        src_dir, pfd, dname = stack.pop()
        try:
            existing = _lstat(dname, pfd)
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                os.unlink(dname, dir_fd=pfd)
                existing = None
            if existing is None:
                os.mkdir(dname, stat.S_IMODE(os.stat(src_dir).st_mode), dir_fd=pfd)
            fd = os.open(dname, _DIR_FLAGS, dir_fd=pfd)
        finally:
            os.close(pfd)
        with os.scandir(src_dir) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((pathlib.Path(entry.path), os.dup(fd), entry.name))
                elif entry.is_symlink():
                    if _lstat(entry.name, fd) is not None:
                        os.unlink(entry.name, dir_fd=fd)
                    os.symlink(os.readlink(entry.path), entry.name, dir_fd=fd)
                elif entry.is_file(follow_symlinks=False):
                    _copy_file_in(pathlib.Path(entry.path), fd, entry.name)
        os.close(fd)
