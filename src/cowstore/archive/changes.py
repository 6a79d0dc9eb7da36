"""Compute what changed between two directory trees (Docker's ChangesDirs).

Used by every driver that has no cheaper way to know its changes. The rules follow
moby so that `diff` output and commits match what Docker users expect: directory
mtimes and sizes are ignored, mtimes compare at whole-second precision when either
side lacks nanoseconds, an unchanged directory above a change is reported as changed
(so applying the diff restores its metadata), and a deleted directory's contents are
not listed one by one.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from typing import BinaryIO, NamedTuple

from cowstore.host import fsutil
from cowstore.host.longpath import ShortPaths

# The one xattr Docker keeps in layers (file capabilities); diffs compare it too.
CAPABILITY_XATTR = "security.capability"


class Change(NamedTuple):
    """One entry of a changeset, like `docker diff` prints it."""

    path: str  # absolute inside the layer, e.g. "/etc/hosts"
    kind: str  # "A" added, "C" changed, "D" deleted

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"


def _capability(path: str, st: os.stat_result) -> bytes | None:
    if stat.S_ISLNK(st.st_mode):
        return None
    try:
        return os.getxattr(path, CAPABILITY_XATTR, follow_symlinks=False)
    except OSError:
        return None


def _open_nofollow(path: str) -> BinaryIO:
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC), "rb")


def _same_content(a: str, b: str) -> bool:
    with _open_nofollow(a) as fa, _open_nofollow(b) as fb:
        while True:
            ca, cb = fa.read(1024 * 1024), fb.read(1024 * 1024)
            if ca != cb:
                return False
            if not ca:
                return True


def _same_mtime(new: str, nst: os.stat_result, old: str, ost: os.stat_result) -> bool:
    """Equal at whole-second precision when a side came from a tar (no nanoseconds).

    Layers extracted from tars have whole-second mtimes, so a same-size rewrite within
    that same second would look unchanged. Docker sleeps to the next second after
    every diff to avoid it; comparing the content of just those files is exact and
    costs nothing in the common case.
    """
    if nst.st_mtime_ns == ost.st_mtime_ns:
        return True
    if nst.st_mtime_ns // 1_000_000_000 != ost.st_mtime_ns // 1_000_000_000:
        return False
    new_ns, old_ns = nst.st_mtime_ns % 1_000_000_000, ost.st_mtime_ns % 1_000_000_000
    if new_ns != 0 and old_ns != 0:
        return False
    if stat.S_ISREG(nst.st_mode) and stat.S_ISREG(ost.st_mode):
        return _same_content(new, old)
    return True


def rewritten(new: str, nst: os.stat_result, old: str, ost: os.stat_result) -> bool:
    """Whether a regular file known to be touched (a ctime after the copy, another inode
    than its twin in a hard-linked copy, an upper-dir entry) holds other bytes than its
    old twin though Docker's rule sees the same size and mtime: a rewrite that kept both
    (`touch -r`, a tar's whole-second mtimes) would otherwise go unseen. Callers ask only
    for touched files, so untouched ones are never read."""
    return stat.S_ISREG(nst.st_mode) and stat.S_ISREG(ost.st_mode) and not _same_content(new, old)


def entry_modified(new: str, nst: os.stat_result, old: str, ost: os.stat_result) -> bool:
    """Docker's rule for whether an entry present in both trees changed."""
    if (nst.st_mode, nst.st_uid, nst.st_gid, nst.st_rdev) != (ost.st_mode, ost.st_uid, ost.st_gid, ost.st_rdev):
        return True
    if not stat.S_ISDIR(nst.st_mode):
        if nst.st_size != ost.st_size or not _same_mtime(new, nst, old, ost):
            return True
        if stat.S_ISLNK(nst.st_mode) and os.readlink(new) != os.readlink(old):
            return True
    return _capability(new, nst) != _capability(old, ost)


def list_entries(path: str) -> dict[str, os.stat_result]:
    """Name -> lstat of the entries of directory `path`."""
    entries = {}
    with os.scandir(path) as it:
        for entry in it:
            entries[entry.name] = entry.stat(follow_symlinks=False)
    return entries


def sorted_with_parents(found: dict[str, str]) -> list[Change]:
    """The changes sorted by path, with every directory above a change reported as changed.

    moby does this so that applying the diff restores the directories' metadata.
    """
    for path in list(found):
        parent = os.path.dirname(path)
        while parent != "/" and parent not in found:
            found[parent] = "C"
            parent = os.path.dirname(parent)
    return sorted(Change(path, kind) for path, kind in found.items())


def _old_entry(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def changes_dirs(
    new: str | os.PathLike,
    old: str | os.PathLike | None,
    *,
    copied_before: int | None = None,
    linked: bool = False,
) -> list[Change]:
    """Changes that turn tree `old` (None: empty) into tree `new`, sorted by path.

    With `copied_before`, `new` began as a copy of `old` whose every entry has a ctime
    (which no one can set) before that many nanoseconds, so an entry of `new` with an
    older ctime is untouched: only the rest is compared with `old`, and only a
    directory whose entries changed has its `old` twin listed. With `linked`, `new`
    began as a hard-linked copy of `old` (overlay's image layers): an entry that is not
    its twin's inode was replaced. A touched or replaced regular file that Docker's rule
    calls unchanged (same size and mtime) has its content compared.
    """
    new_root = os.fspath(new)
    old_root = os.fspath(old) if old is not None else None
    found: dict[str, str] = {}
    # Each stack item: directory path relative to both roots, and whether it exists as a
    # directory in the old tree (else everything below it is an addition).
    stack: list[tuple[str, bool]] = [("", old_root is not None)]
    with ShortPaths() as short:
        while stack:
            rel, in_old = stack.pop()
            _compare_dir(short, new_root, old_root if in_old else None, rel, found, stack, copied_before, linked)
    return sorted_with_parents(found)


def _compare_dir(
    short: ShortPaths,
    new_root: str,
    old_root: str | None,
    rel: str,
    found: dict[str, str],
    stack: list[tuple[str, bool]],
    copied_before: int | None,
    linked: bool,
) -> None:
    """One directory of changes_dirs: record its changes, queue its subdirectories.

    `old_root` is None when the directory is not in the old tree. A directory whose
    ctime is older than `copied_before` kept the entries of its copy: its old twin is
    not listed, and only its entries with a newer ctime are looked up there one by one.
    """
    listed = old_root is not None
    if listed and copied_before is not None:
        listed = os.stat(short.path(new_root, rel)).st_ctime_ns >= copied_before  # a directory: no link to follow
    new_entries = list_entries(short.path(new_root, rel))
    old_entries = list_entries(short.path(old_root, rel)) if listed and old_root is not None else {}
    for name, nst in new_entries.items():
        path = f"{rel}/{name}" if rel else name
        if old_root is not None and not listed:  # an untouched directory of the copy
            if nst.st_ctime_ns < (copied_before or 0):
                if stat.S_ISDIR(nst.st_mode):
                    stack.append((path, True))
                continue
            ost = _old_entry(short.path(old_root, path))
        else:
            ost = old_entries.get(name)
        if ost is None:
            found["/" + path] = "A"
            if stat.S_ISDIR(nst.st_mode):
                stack.append((path, False))
            continue
        if (nst.st_dev, nst.st_ino) == (ost.st_dev, ost.st_ino):
            continue  # the same lower inode seen through a union mount
        assert old_root is not None
        new_path, old_path = short.path(new_root, path), short.path(old_root, path)
        touched = linked or (copied_before is not None and nst.st_ctime_ns >= copied_before)
        if entry_modified(new_path, nst, old_path, ost) or (touched and rewritten(new_path, nst, old_path, ost)):
            found["/" + path] = "C"
        if stat.S_ISDIR(nst.st_mode):
            stack.append((path, stat.S_ISDIR(ost.st_mode)))
    for name in old_entries.keys() - new_entries.keys() if listed else ():
        found["/" + (f"{rel}/{name}" if rel else name)] = "D"


def changes_size(root: str | os.PathLike, changes: Iterable[Change]) -> int:
    """Bytes that the additions and modifications occupy (hard links counted once)."""
    root = os.fspath(root)

    def stats(short: ShortPaths) -> Iterable[os.stat_result]:
        for change in changes:
            if change.kind != "D":
                try:
                    yield os.lstat(short.path(root, change.path.lstrip("/")))
                except FileNotFoundError:
                    continue

    with ShortPaths() as short:
        return fsutil.unique_size(stats(short))
