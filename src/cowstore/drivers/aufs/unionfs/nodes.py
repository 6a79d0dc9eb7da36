"""The node table: the ids the kernel holds for union paths, and its lookup counts.

Nodes are keyed by union path, except that non-directories with several links share
one node per real inode, so the kernel sees hard links as one inode (size and nlink
stay coherent between names). A node lives until the kernel forgets its last lookup
and no open file refers to it.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cowstore.drivers.aufs.unionfs.resolve import under
from cowstore.host.fuse import Entry

if TYPE_CHECKING:
    from cowstore.drivers.aufs.unionfs.handles import Backing

ROOT = 1


class Node:
    """One kernel inode of the union: its union paths (hard links) and what holds it."""

    __slots__ = ("backing", "id", "nlookup", "no_caps", "open_fds", "paths")

    def __init__(self, nid: int, path: bytes) -> None:
        self.id = nid
        self.paths = [path]
        self.nlookup = 0
        self.backing: Backing | None = None
        self.open_fds: list[int] = []
        # Known to carry no security.capability. FUSE never sets S_NOSEC, so the
        # kernel asks for that xattr before EVERY write, passthrough writes included
        # (file_remove_privs); answering from here keeps that round trip short. Only
        # setxattr/removexattr through this mount can add one (a write to the branch
        # file itself clears it there), so those are the only invalidations needed.
        self.no_caps = False

    @property
    def path(self) -> bytes:
        return self.paths[0]


class Nodes:
    """Node ids by union path and by real inode."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._nodes: dict[int, Node] = {ROOT: Node(ROOT, b"")}
        self._by_path: dict[bytes, int] = {b"": ROOT}
        self._by_inode: dict[tuple[int, int], int] = {}
        self._next_id = itertools.count(ROOT + 1)

    def get(self, nid: int) -> Node:
        """The node of a kernel id; ESTALE for one the table no longer knows."""
        node = self._nodes.get(nid)
        if node is None:
            raise OSError(errno.ESTALE, "unknown node")
        return node

    def named(self, node: Node) -> bool:
        """Whether the node's first path still names it (not unlinked or replaced)."""
        return self._by_path.get(node.path) == node.id

    def entry(self, path: bytes, st: os.stat_result) -> Entry:
        """Answer a lookup: find or make the node and count the kernel's reference."""
        nid = self._by_path.get(path)
        key = (st.st_dev, st.st_ino)
        shared = not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1
        if nid is None and shared:
            nid = self._by_inode.get(key)
            if nid is not None:
                self._nodes[nid].paths.append(path)
                self._by_path[path] = nid
        if nid is None:
            nid = next(self._next_id)
            self._nodes[nid] = Node(nid, path)
            self._by_path[path] = nid
        if shared:
            self._by_inode[key] = nid
        self._nodes[nid].nlookup += 1
        return Entry(nid, st, self.timeout, self.timeout)

    def link(self, node: Node, path: bytes, st: os.stat_result) -> Entry:
        """A new hard link `path` of `node` (whose inode `st` describes)."""
        self._by_inode[(st.st_dev, st.st_ino)] = node.id
        self._by_path[path] = node.id
        node.paths.append(path)
        node.nlookup += 1
        return Entry(node.id, st, self.timeout, self.timeout)

    def drop_path(self, path: bytes) -> None:
        """`path` no longer names its node (unlink, rename target)."""
        nid = self._by_path.pop(path, None)
        if nid is None:
            return
        node = self._nodes[nid]
        if path in node.paths and len(node.paths) > 1:
            node.paths.remove(path)

    def detach(self, node: Node) -> None:
        """Make later lookups of the node's names get a new node (its file was replaced)."""
        for path in list(node.paths):
            if self._by_path.get(path) == node.id:
                del self._by_path[path]
        self._by_inode = {k: v for k, v in self._by_inode.items() if v != node.id}

    def move(self, old: bytes, new: bytes) -> None:
        """Union path `old` and everything below it are now under `new` (rename)."""
        for node in self._nodes.values():
            for i, path in enumerate(node.paths):
                if under(path, old):
                    moved = new + path[len(old) :]
                    if self._by_path.get(path) == node.id:
                        del self._by_path[path]
                    self._by_path[moved] = node.id
                    node.paths[i] = moved

    def forget(self, items: Iterable[tuple[int, int]]) -> None:
        """Drop kernel references; a node nobody holds any more leaves the table."""
        for nid, count in items:
            node = self._nodes.get(nid)
            if node is None or nid == ROOT:
                continue
            node.nlookup -= count
            if node.nlookup <= 0 and not node.open_fds:
                del self._nodes[nid]
                for path in node.paths:
                    if self._by_path.get(path) == nid:
                        del self._by_path[path]
                for key, value in list(self._by_inode.items()):
                    if value == nid:
                        del self._by_inode[key]

    def release(self, node: Node) -> None:
        """The node's last open file closed: drop it if the kernel forgot it already."""
        if node.nlookup <= 0 and not node.open_fds and node.id in self._nodes:
            self.forget([(node.id, 0)])
