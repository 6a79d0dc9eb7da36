"""Overlay upper directories as changesets: whiteouts, opaque directories, changes.

An upper dir holds exactly what a layer changed, in overlayfs' own notation (0:0
character devices for deletions, the opaque xattr for replaced directories). These
functions read that notation, and repair what overlayfs would misread in a layer
written from a tar.
"""

from __future__ import annotations

import os
import pathlib
import stat

from cowstore.archive.changes import Change, entry_modified, list_entries, rewritten, sorted_with_parents
from cowstore.archive.whiteouts import OVERLAY_OPAQUE, is_overlay_whiteout, overlay_xattr
from cowstore.drivers.overlay.kernel import in_user_namespace
from cowstore.host import fsutil
from cowstore.host.longpath import ShortPaths
from cowstore.host.safepath import lstat_beneath


def opaque_xattr() -> str:
    """The opaque xattr's name for this process's mounts (user.* under userxattr)."""
    return overlay_xattr(OVERLAY_OPAQUE, userxattr=in_user_namespace())


def is_opaque(path: str | os.PathLike) -> bool:
    """Whether the upper directory hides everything below it (opaque xattr = "y")."""
    try:
        value = os.getxattr(path, opaque_xattr(), follow_symlinks=False)
    except OSError:
        return False
    return value == b"y"


def upper_changes(upper: str | os.PathLike, parent_view: str | os.PathLike | None) -> list[Change]:
    """The changes an upper dir makes to `parent_view` (the parent's mounted tree).

    Gives what `changes_dirs(merged, parent_view)` gives, but visits only the upper
    dir's entries: a lower entry is looked at only when the upper dir names it, and a
    lower directory is listed only when the upper one is opaque (deleted and recreated).
    """
    upper_root = os.fspath(upper)
    old_root = os.fspath(parent_view) if parent_view is not None else None
    found: dict[str, str] = {}
    stack: list[tuple[str, bool]] = [("", old_root is not None)]
    with ShortPaths() as short:
        while stack:
            rel, in_old = stack.pop()
            new_entries = list_entries(short.path(upper_root, rel))
            for name, nst in new_entries.items():
                path = f"{rel}/{name}" if rel else name
                old_path = short.path(old_root, path) if in_old and old_root is not None else None
                ost = fsutil.lstat_or_none(old_path) if old_path is not None else None
                if is_overlay_whiteout(nst):
                    if ost is not None:
                        found["/" + path] = "D"
                    continue
                if ost is None or old_path is None:  # old_path: for the type checker
                    found["/" + path] = "A"
                    if stat.S_ISDIR(nst.st_mode):
                        stack.append((path, False))
                    continue
                new_path = short.path(upper_root, path)
                # Every upper entry was copied up or replaced: a file Docker's rule calls
                # unchanged is compared by content.
                if entry_modified(new_path, nst, old_path, ost) or rewritten(new_path, nst, old_path, ost):
                    found["/" + path] = "C"
                if not stat.S_ISDIR(nst.st_mode):
                    continue
                if stat.S_ISDIR(ost.st_mode) and is_opaque(new_path):
                    for gone in list_entries(old_path).keys() - _real_names(new_path):
                        found[f"/{path}/{gone}"] = "D"
                stack.append((path, stat.S_ISDIR(ost.st_mode)))
    return sorted_with_parents(found)


def _real_names(path: str) -> set[str]:
    """Names in an upper directory that are real entries (whiteouts hide, not add)."""
    return {name for name, st in list_entries(path).items() if not is_overlay_whiteout(st)}


def expand_root_opaque(upper: pathlib.Path, parent_view: pathlib.Path | None) -> None:
    """Make an opaque upper *root* work: overlay ignores the opaque flag on a layer root.

    A layer tar may say "hide everything below" at its top (`.wh..wh..opq` at the root).
    The same effect is spelled out instead: a whiteout for every top-level name the
    parent shows that this layer does not replace, and the opaque flag on each directory
    that replaces a parent directory (one level down, where overlay honours it).
    """
    key = opaque_xattr()
    os.removexattr(upper, key)
    if parent_view is None:
        return
    for name, theirs in list_entries(os.fspath(parent_view)).items():
        mine = fsutil.lstat_or_none(os.path.join(upper, name))
        if mine is None:
            os.mknod(os.path.join(upper, name), stat.S_IFCHR | 0o600, os.makedev(0, 0))
        elif stat.S_ISDIR(mine.st_mode) and stat.S_ISDIR(theirs.st_mode):
            os.setxattr(os.path.join(upper, name), key, b"y", follow_symlinks=False)


def drop_needless_whiteouts(upper: pathlib.Path, parent_view: pathlib.Path) -> None:
    """Remove whiteout devices that hide nothing in the parent view.

    overlayfs lists a directory that exists only in the upper layer straight from disk,
    so a whiteout there (a tar may white out a name its lower layers never had) would
    show up in readdir as a name that cannot be opened.
    """
    for dirpath, dirnames, filenames in fsutil.walk(os.fspath(upper)):
        rel = os.path.relpath(dirpath, upper)
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if is_overlay_whiteout(st) and lstat_beneath(parent_view, os.path.join(rel, name)) is None:
                os.unlink(path)
