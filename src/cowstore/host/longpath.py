"""Paths below a root that system calls accept even when root/rel is longer than PATH_MAX.

A container can nest directories until its paths exceed 4,096 bytes (each mkdir is
relative to the last); every walk that joins path strings then fails with ENAMETOOLONG,
and `ps` failed for the whole store because one container's size could not be taken.
Deep prefixes are opened once, in pieces the kernel accepts, and a long path becomes
`/proc/self/fd/<fd>/<short tail>`.
"""

from __future__ import annotations

import collections
import os

from cowstore.host.safepath import descend, split_pieces

_SHORT = 3072  # joined paths up to this length are used as they are
_PIECE = 2048  # prefix pieces opened per openat2 call, and the longest tail
_CACHED = 32


class ShortPaths:
    """Hands out usable paths for (root, rel); holds the descriptors of deep prefixes until closed."""

    def __init__(self) -> None:
        self._fds: collections.OrderedDict[tuple[str, str], int] = collections.OrderedDict()

    def path(self, root: str, rel: str) -> str:
        full = os.path.join(root, rel) if rel else root
        if len(full) <= _SHORT:
            return full
        cut = rel.find("/", len(rel) - _PIECE)
        head, tail = (rel[:cut], rel[cut + 1 :]) if cut > 0 else (rel, "")
        fd = self._prefix(root, head)
        return f"/proc/self/fd/{fd}/{tail}" if tail else f"/proc/self/fd/{fd}"

    def _prefix(self, root: str, head: str) -> int:
        key = (root, head)
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
            return fd
        fd = descend(os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), split_pieces(head))
        self._fds[key] = fd
        if len(self._fds) > _CACHED:
            _, old = self._fds.popitem(last=False)
            os.close(old)
        return fd

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])

    def __enter__(self) -> ShortPaths:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
