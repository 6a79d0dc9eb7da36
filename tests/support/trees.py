"""Compare file trees entry by entry: a directory, a flat tar (`docker export`), or a source's hash.

An entry is (type, mode, uid, gid, size, content digest, symlink target, xattrs), and
hard links are compared as the groups of names that share an inode (or a tar link).
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import stat
import tarfile
from typing import NamedTuple

# overlay keeps its own xattrs in upper dirs; they are never a container's content.
_HIDDEN_XATTRS = ("trusted.overlay.", "user.overlay.")


class Entry(NamedTuple):
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    digest: str
    target: str
    xattrs: tuple[tuple[str, bytes], ...]


class Tree(NamedTuple):
    entries: dict[str, Entry]
    links: set[frozenset[str]]  # names of one inode, for inodes with several names


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(
        sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names if not n.startswith(_HIDDEN_XATTRS))
    )


def dir_tree(root: str | os.PathLike, skip: frozenset[str] = frozenset()) -> Tree:
    """Every entry below `root` (names relative, no leading slash), except the names in `skip`."""
    entries: dict[str, Entry] = {}
    inodes: dict[int, set[str]] = {}
    base = os.fspath(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, base)
            if rel in skip:
                continue
            st = os.lstat(path)
            kind, digest, target = "other", "", ""
            if stat.S_ISREG(st.st_mode):
                kind = "file"
                with open(path, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, set()).add(rel)
            elif stat.S_ISDIR(st.st_mode):
                kind = "dir"
            elif stat.S_ISLNK(st.st_mode):
                kind, target = "symlink", os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                kind = f"dev{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
            elif stat.S_ISFIFO(st.st_mode):
                kind = "fifo"
            size = st.st_size if kind == "file" else 0
            mode = stat.S_IMODE(st.st_mode)
            entries[rel] = Entry(kind, mode, st.st_uid, st.st_gid, size, digest, target, _xattrs(path))
    return Tree(entries, {frozenset(names) for names in inodes.values() if len(names) > 1})


def tar_tree(data: bytes, skip: frozenset[str] = frozenset()) -> Tree:
    """The same view of a flat tar (what `docker export` writes)."""
    entries: dict[str, Entry] = {}
    groups: dict[str, set[str]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = {m.name.rstrip("/"): m for m in archive}
        for name, member in members.items():
            if name in skip or name in (".", ""):
                continue
            xattrs = tuple(
                sorted(
                    (key[len("SCHILY.xattr.") :], value.encode("utf-8", "surrogateescape"))
                    for key, value in member.pax_headers.items()
                    if key.startswith("SCHILY.xattr.")
                )
            )
            source = members[member.linkname] if member.islnk() else member
            if member.islnk():
                groups.setdefault(member.linkname, {member.linkname}).add(name)
            kind, digest = "other", ""
            if source.isreg():
                kind = "file"
                handle = archive.extractfile(source)
                assert handle is not None
                digest = hashlib.sha256(handle.read()).hexdigest()
            elif source.isdir():
                kind = "dir"
            elif source.issym():
                kind = "symlink"
            elif source.ischr() or source.isblk():
                kind = f"dev{source.devmajor}:{source.devminor}"
            elif source.isfifo():
                kind = "fifo"
            size = source.size if kind == "file" else 0
            target = source.linkname if kind == "symlink" else ""
            entries[name] = Entry(kind, source.mode & 0o7777, source.uid, source.gid, size, digest, target, xattrs)
    return Tree(entries, {frozenset(g) for g in groups.values()})


def source_fingerprint(root: pathlib.Path) -> str:
    """A digest of everything below `root` that a write would change: names, types, modes,
    owners, sizes, contents, link targets, xattrs, mtimes and ctimes."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            fields = (path, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink)
            digest.update(repr(fields).encode())
            digest.update(repr(_xattrs_all(path)).encode())
            if stat.S_ISLNK(st.st_mode):
                digest.update(os.readlink(path).encode())
            elif stat.S_ISREG(st.st_mode):
                _hash_data(path, st.st_size, digest)
    return digest.hexdigest()


def _hash_data(path: str, size: int, digest: hashlib._Hash) -> None:
    """Hash a file's data extents with their offsets (sparse pool files are mostly holes)."""
    with open(path, "rb") as fh:
        fd, offset = fh.fileno(), 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                return
            end = os.lseek(fd, start, os.SEEK_HOLE)
            digest.update(str(start).encode())
            fh.seek(start)
            left = end - start
            while left > 0:
                chunk = fh.read(min(left, 1 << 20))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
            offset = end


def _xattrs_all(path: str) -> list[tuple[str, bytes]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
        return sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names)
    except OSError:
        return []
