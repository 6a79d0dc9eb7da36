"""Path resolution across branches: which branch shows a union path, and what a union
directory lists.

Lookups go top-down and the first match wins; a `.wh.<name>` file in a branch hides
`<name>` in the branches below it, and a directory holding `.wh..wh..opq` hides
everything below it. Resolutions are cached per union path until a change through
the mount touches that path (the caller says which, with `forget`), so a deep branch
stack is walked once per name, not once per request.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cowstore.archive.whiteouts import META_PREFIX_BYTES, OPAQUE_MARKER_BYTES, WHITEOUT_PREFIX_BYTES
from cowstore.drivers.aufs.unionfs.branches import Branch, whiteout
from cowstore.host.fuse import protocol as proto


@dataclass
class Loc:
    """Where a union path lives: the winning branch and, for a directory, every branch
    that contributes entries to it (top-down, cut at an opaque dir or a whiteout)."""

    branch: int
    mode: int
    dirs: list[int] = field(default_factory=list)


def join(parent: bytes, name: bytes) -> bytes:
    """A union path below `parent` (the root is the empty path)."""
    return parent + b"/" + name if parent else name


def split(path: bytes) -> tuple[bytes, bytes]:
    """(parent, name) of a union path."""
    parent, _, name = path.rpartition(b"/")
    return parent, name


def under(path: bytes, prefix: bytes) -> bool:
    """Whether union path `path` is `prefix` or below it."""
    return path == prefix or (path.startswith(prefix + b"/") if prefix else True)


def lexists(path: bytes) -> bool:
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def lstat_or_none(path: bytes) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def not_found() -> OSError:
    return OSError(errno.ENOENT, os.strerror(errno.ENOENT))


def _dtype(entry: os.DirEntry) -> int:
    """d_type without a stat for the common kinds (scandir already knows them)."""
    if entry.is_dir(follow_symlinks=False):
        return stat.S_IFDIR >> 12
    if entry.is_symlink():
        return stat.S_IFLNK >> 12
    if entry.is_file(follow_symlinks=False):
        return stat.S_IFREG >> 12
    return proto.dirent_type(entry.stat(follow_symlinks=False).st_mode)


class Resolver:
    """Resolves union paths over a fixed stack of branches (branch 0 on top)."""

    def __init__(self, branches: Sequence[Branch]) -> None:
        self.branches = list(branches)
        self._locs: dict[bytes, Loc] = {}

    def real(self, branch: int, path: bytes) -> bytes:
        """The real path of union path `path` in branch `branch`."""
        base = self.branches[branch].path
        return base + b"/" + path if path else base

    def locate(self, path: bytes) -> Loc | None:
        """Resolve a union path; None when no branch shows it."""
        loc = self._locs.get(path)
        if loc is not None:
            return loc
        if not path:
            loc = self._root_loc()
        else:
            parent, name = split(path)
            ploc = self.locate(parent)
            if ploc is None or not ploc.dirs:
                return None
            loc = self._scan(parent, name, ploc.dirs)
            if loc is None:
                return None
        self._locs[path] = loc
        return loc

    def need(self, path: bytes) -> Loc:
        """Like `locate`, but a missing path is ENOENT."""
        loc = self.locate(path)
        if loc is None:
            raise not_found()
        return loc

    def lstat(self, path: bytes) -> tuple[Loc, os.stat_result]:
        """The location and lstat of a union path, resolving again if a branch changed."""
        loc = self.need(path)
        st = lstat_or_none(self.real(loc.branch, path))
        if st is None:  # a branch changed behind our back: resolve again
            self.forget(path, subtree=True)
            loc = self.need(path)
            st = os.lstat(self.real(loc.branch, path))
        return loc, st

    def real_of(self, path: bytes) -> bytes:
        """The real path that shows union path `path` now."""
        loc, _ = self.lstat(path)
        return self.real(loc.branch, path)

    def lower_exists(self, parent: bytes, name: bytes) -> bool:
        """Whether `name` would show through from a lower branch if branch 0 had nothing."""
        ploc = self.locate(parent)
        if ploc is None:
            return False
        return self._scan(parent, name, [i for i in ploc.dirs if i != 0]) is not None

    def forget(self, path: bytes, subtree: bool = False) -> None:
        """Drop the cached resolution of `path` (and everything below it with `subtree`)."""
        self._locs.pop(path, None)
        if subtree:
            for key in [k for k in self._locs if under(k, path)]:
                del self._locs[key]

    def list_dir(self, path: bytes, loc: Loc) -> list[tuple[bytes, int, int]]:
        """Merged (name, ino, d_type) entries of a union directory, whiteouts applied."""
        seen: dict[bytes, tuple[bytes, int, int]] = {}
        hidden: set[bytes] = set()
        for index in loc.dirs:
            new_hidden = []
            with os.scandir(self.real(index, path)) as it:
                for entry in it:
                    name = entry.name
                    if name.startswith(WHITEOUT_PREFIX_BYTES):
                        if not name.startswith(META_PREFIX_BYTES):
                            new_hidden.append(name[len(WHITEOUT_PREFIX_BYTES) :])
                        continue
                    if name in seen or name in hidden:
                        continue
                    seen[name] = (name, entry.inode(), _dtype(entry))
            hidden.update(new_hidden)
        return list(seen.values())

    def is_empty(self, path: bytes, loc: Loc) -> bool:
        return not self.list_dir(path, loc)

    def _root_loc(self) -> Loc:
        dirs = []
        for index in range(len(self.branches)):
            dirs.append(index)
            if lexists(self.real(index, OPAQUE_MARKER_BYTES)):
                break
        return Loc(0, stat.S_IFDIR, dirs)

    def _scan(self, parent: bytes, name: bytes, dirs: Iterable[int]) -> Loc | None:
        found: Loc | None = None
        for index in dirs:
            base = self.real(index, parent)
            st = lstat_or_none(base + b"/" + name)
            if st is not None:
                is_dir = stat.S_ISDIR(st.st_mode)
                if found is None:
                    found = Loc(index, stat.S_IFMT(st.st_mode))
                    if not is_dir:
                        return found
                elif not is_dir:
                    break
                found.dirs.append(index)
                if lexists(base + b"/" + name + b"/" + OPAQUE_MARKER_BYTES):
                    break
            if lexists(base + b"/" + whiteout(name)):
                break
        return found
