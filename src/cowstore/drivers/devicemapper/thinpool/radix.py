"""Copy-on-write radix trees in the metadata area, as dm-thin keeps its mappings.

Every tree has a fixed depth; a node is one metadata block of `FANOUT` 64-bit
entries, 0 meaning empty. An inner node's entries point at child nodes; a leaf's are
values. Each thin device maps virtual blocks through one tree (value: data block
+ 1), and the data reference counts hang from one more (value: the metadata block of
a count leaf).

Sharing is pushed down lazily: a snapshot adds one parent to the origin's root, and
only when a node with several parents must change does it get a private copy (it is
"shadowed"), which gives each of its children one more parent, or each data block
of a mapping leaf one more reference. Counts therefore stay exact without touching
the whole tree at snapshot time. A node the open transaction allocated and alone
reaches is changed in place; every other one is shadowed first, so the last commit
stays intact on disk.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterator

from cowstore.drivers.devicemapper.thinpool.errors import BadMetadata
from cowstore.drivers.devicemapper.thinpool.ondisk import META_BLOCK
from cowstore.drivers.devicemapper.thinpool.spacemap import DataSpaceMap, MetadataSpaceMap

FANOUT = 512
SHIFT = 9
MASK = FANOUT - 1
_ZERO_BLOCK = bytes(META_BLOCK)


def depth_for(count: int) -> int:
    """Levels a tree needs to address `count` keys."""
    depth = 1
    while FANOUT**depth < count:
        depth += 1
    return depth


class RadixTrees:
    """All the trees of one metadata area, over one node cache and one space map.

    Also the store of the other metadata blocks the open transaction writes (device
    table blocks, count leaves): `new_block` holds their contents until the commit.
    Leaf values of trees that can be shared (the device trees) are data blocks + 1
    whose references `data` counts; the count tree is never shared.
    """

    def __init__(self, meta_fd: int, meta: MetadataSpaceMap, data: DataSpaceMap) -> None:
        self._fd = meta_fd
        self._meta = meta
        self._data = data
        self._nodes: dict[int, array] = {}
        self._raw: dict[int, bytes] = {}

    # ------------------------------------------------------------- metadata blocks

    def node(self, block: int) -> array:
        """The node in `block`, read once and cached (the cache holds what changes too)."""
        node = self._nodes.get(block)
        if node is None:
            node = array("Q")
            node.frombytes(os.pread(self._fd, META_BLOCK, block * META_BLOCK))
            if len(node) != FANOUT:
                raise BadMetadata(f"metadata block {block} is beyond the end of the metadata area")
            self._nodes[block] = node
        return node

    def new_node(self, first: int = 0) -> int:
        """A fresh empty node, or one whose entry 0 is `first`."""
        block = self._meta.alloc()
        node = array("Q", _ZERO_BLOCK)
        node[0] = first
        self._nodes[block] = node
        return block

    def new_block(self, payload: bytes) -> int:
        """A fresh metadata block holding `payload` (one block long) from the next commit on."""
        block = self._meta.alloc()
        self._raw[block] = payload
        return block

    def release(self, block: int) -> None:
        """Drop a block whose last parent went away."""
        self._nodes.pop(block, None)
        self._raw.pop(block, None)
        self._meta.release(block)

    def write_fresh(self) -> None:
        """Write every block the open transaction allocated (a commit, before its superblock)."""
        for block in self._meta.fresh:
            payload = self._raw.get(block)
            if payload is None:
                payload = self._nodes[block].tobytes()
            os.pwrite(self._fd, payload, block * META_BLOCK)

    def committed(self) -> None:
        """The superblock reaching the fresh blocks is on disk: their contents are no
        longer needed apart from the nodes, which stay cached."""
        self._raw.clear()

    # -------------------------------------------------------------------- reading

    def count_parents(self, root: int, level: int) -> None:
        """Add one parent to `root`, descending into nodes seen for the first time
        (opening a pool: metadata counts are recounted, never stored)."""
        stack = [(root, level)]
        meta = self._meta
        count = meta.counts
        while stack:
            block, lvl = stack.pop()
            meta.valid(block)
            seen = count[block]
            count[block] = seen + 1
            if seen == 0 and lvl > 0:
                stack.extend((child, lvl - 1) for child in self.node(block) if child)

    def lookup(self, root: int, depth: int, key: int) -> tuple[int, bool]:
        """(value of `key` or 0, whether every node on its path has a single parent)."""
        block, level = root, depth - 1
        count = self._meta.counts
        private = True
        while block:
            if count[block] != 1:
                private = False
            value = self.node(block)[(key >> (SHIFT * level)) & MASK]
            if not level:
                return value, private
            block, level = value, level - 1
        return 0, False

    def items(self, root: int, depth: int, lo: int = 0, hi: int | None = None) -> Iterator[tuple[int, int]]:
        """(key, value) of every non-empty entry with a key in [lo, hi), ascending."""
        if hi is None:
            hi = FANOUT**depth
        if not root:
            return
        stack = [(root, depth - 1, 0)]
        while stack:
            block, level, base = stack.pop()
            node = self.node(block)
            span = 1 << (SHIFT * level)
            first = max(0, (lo - base) // span)
            last = min(FANOUT, -(-(hi - base) // span))
            if level:
                for i in range(last - 1, first - 1, -1):
                    if node[i]:
                        stack.append((node[i], level - 1, base + i * span))
            else:
                for i in range(first, last):
                    if node[i]:
                        yield base + i, node[i]

    # ------------------------------------------------------------------- changing

    def shadow(self, block: int, level: int) -> int:
        """A private, writable copy of node `block` (the block itself when already so)."""
        count = self._meta.counts
        if self._meta.private(block):
            return block
        node = self.node(block)
        new = self._meta.alloc()
        self._nodes[new] = array("Q", node)
        parents = count[block]
        if parents > 1:
            count[block] = parents - 1
            if level:
                for child in node:
                    if child:
                        count[child] += 1
            else:
                for child in node:
                    if child:
                        self._data.inc(child - 1)
        else:
            self.release(block)
        return new

    def private_path(self, root: int, depth: int, key: int) -> tuple[int, array]:
        """Shadow every node from `root` down to the leaf holding `key`, creating the
        missing ones.

        Returns the new root and that leaf, which the open transaction may now change
        in place; nodes still shared with the last commit or other trees are left alone.
        """
        level = depth - 1
        root = self.shadow(root, level) if root else self.new_node()
        node = self._nodes[root]
        while level:
            index = (key >> (SHIFT * level)) & MASK
            child = node[index]
            child = self.shadow(child, level - 1) if child else self.new_node()
            node[index] = child
            node = self._nodes[child]
            level -= 1
        return root, node

    def drop(self, root: int, level: int) -> None:
        """Remove one parent from `root`, freeing what nobody else uses."""
        stack = [(root, level)]
        count = self._meta.counts
        while stack:
            block, lvl = stack.pop()
            parents = count[block]
            if parents > 1:
                count[block] = parents - 1
                continue
            node = self.node(block)
            if lvl:
                stack.extend((child, lvl - 1) for child in node if child)
            else:
                for child in node:
                    if child:
                        self._data.dec(child - 1)
            self.release(block)
