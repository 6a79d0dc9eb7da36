"""Space maps: how many references each metadata block and each data block has.

A block with no reference is free. Both maps follow dm-thin's rule for the open
transaction: a block whose last reference goes away is not free yet, because the
last committed state may still reach it and a crash would return to that state. It
is counted as `PENDING` and becomes free only once a commit has made a superblock
that no longer reaches it.

Metadata block counts (parents of each node or block) are never stored: they are
recounted from the trees when a pool opens, so a metadata block cannot leak. Data
block counts (mapping-tree leaves pointing at each block) are stored in leaves of
`REFS_PER_LEAF` counts, so opening a big pool does not read every mapping; the data
map remembers which leaves the open transaction changed.
"""

from __future__ import annotations

from array import array

from cowstore.drivers.devicemapper.thinpool.errors import BadMetadata, PoolFull
from cowstore.drivers.devicemapper.thinpool.ondisk import META_BLOCK, SUPERBLOCK_SLOTS

PENDING = 0xFFFFFFFF  # the count of a block freed in the open transaction (not reusable yet)
REFS_PER_LEAF = META_BLOCK // 4


class MetadataSpaceMap:
    """Parents of every metadata block, and the blocks the open transaction allocated.

    Blocks allocated since the last commit (`fresh`) are written at the next commit;
    until then nothing committed reaches them, so a fresh block with one parent may be
    changed in place, and one released again is free at once.
    """

    def __init__(self, nr_blocks: int) -> None:
        self.counts = array("I", bytes(4 * nr_blocks))
        for slot in range(SUPERBLOCK_SLOTS):
            self.counts[slot] = 1  # the superblock slots: never handed out
        self.free = 0
        self.fresh: set[int] = set()
        self.pending: list[int] = []
        self._cursor = SUPERBLOCK_SLOTS

    def recount_free(self) -> None:
        """Count the free blocks once every reference has been counted (opening a pool)."""
        self.free = self.counts.count(0)

    def valid(self, block: int) -> int:
        """`block`, if a stored pointer to it can be right; else the metadata is corrupt."""
        if not SUPERBLOCK_SLOTS <= block < len(self.counts):
            raise BadMetadata(f"metadata block pointer {block} out of range")
        return block

    def available(self) -> int:
        """Blocks free now or at the next commit."""
        return self.free + len(self.pending)

    def alloc(self) -> int:
        """A free block with one parent, searched from where the last search stopped so
        consecutive allocations land near each other and the search stays short."""
        count = self.counts
        try:
            block = count.index(0, self._cursor)
        except ValueError:
            try:
                block = count.index(0, SUPERBLOCK_SLOTS)
            except ValueError:
                raise PoolFull("thin pool metadata area is full: grow the metadata file") from None
        self._cursor = block + 1
        count[block] = 1
        self.free -= 1
        self.fresh.add(block)
        return block

    def private(self, block: int) -> bool:
        """Whether the open transaction may change `block` in place: it allocated it and
        only one parent reaches it."""
        return block in self.fresh and self.counts[block] == 1

    def release(self, block: int) -> None:
        """Drop a block whose last parent went away: free at once if fresh, else pending."""
        if block in self.fresh:
            self.fresh.discard(block)
            self.counts[block] = 0
            self.free += 1
        else:
            self.counts[block] = PENDING
            self.pending.append(block)

    def committed(self) -> None:
        """The new superblock is on disk: pending blocks are free and fresh ones committed."""
        for block in self.pending:
            self.counts[block] = 0
        self.free += len(self.pending)
        self.pending = []
        self.fresh.clear()


class DataSpaceMap:
    """References to every data block from mapping-tree leaves; allocation of new blocks.

    `unsafe` holds blocks whose count dropped in the open transaction without reaching
    zero: the last commit still shares them, so even a sole owner must copy them before
    writing (the committed state would otherwise see the write).
    """

    def __init__(self, nr_blocks: int) -> None:
        self.refs = array("I", bytes(4 * nr_blocks))
        self.free = 0
        self.pending: list[int] = []
        self.unsafe: set[int] = set()
        self.dirty_leaves: set[int] = set()
        self._cursor = 0

    def load_leaf(self, leaf: int, raw: bytes) -> None:
        """Take the counts of stored leaf number `leaf` (opening a pool)."""
        counts = array("I")
        counts.frombytes(raw)
        lo = leaf * REFS_PER_LEAF
        hi = min(lo + REFS_PER_LEAF, len(self.refs))
        if hi > lo:
            self.refs[lo:hi] = counts[: hi - lo]

    def leaf_bytes(self, leaf: int) -> bytes:
        """Leaf number `leaf` as stored: its counts, padded to a metadata block."""
        lo = leaf * REFS_PER_LEAF
        return self.refs[lo : lo + REFS_PER_LEAF].tobytes().ljust(META_BLOCK, b"\0")

    def recount_free(self) -> None:
        """Count the free blocks once every leaf has been loaded (opening a pool)."""
        self.free = self.refs.count(0)

    def available(self) -> int:
        """Blocks free now or at the next commit."""
        return self.free + len(self.pending)

    def grow(self, nr_blocks: int) -> None:
        """Add free blocks up to `nr_blocks` (the data area grew)."""
        added = nr_blocks - len(self.refs)
        if added > 0:
            self.refs.extend(array("I", bytes(4 * added)))
            self.free += added

    def inc(self, block: int) -> None:
        self.refs[block] += 1
        self.dirty_leaves.add(block // REFS_PER_LEAF)

    def dec(self, block: int) -> None:
        refs = self.refs[block]
        if refs == 1:
            self.refs[block] = PENDING
            self.pending.append(block)
        else:
            self.refs[block] = refs - 1
            self.unsafe.add(block)
        self.dirty_leaves.add(block // REFS_PER_LEAF)

    def claim(self, block: int) -> None:
        """Add a reference to a block named from outside (restoring a dump), free or not."""
        if self.refs[block] == 0:
            self.free -= 1
        self.inc(block)

    def alloc(self) -> int:
        """A free block with one reference, searched from where the last search stopped
        so a device written in order gets consecutive blocks (one I/O for a long run)."""
        refs = self.refs
        try:
            block = refs.index(0, self._cursor)
        except ValueError:
            try:
                block = refs.index(0)
            except ValueError:
                raise PoolFull("thin pool is out of data space") from None
        self._cursor = block + 1
        refs[block] = 1
        self.free -= 1
        self.dirty_leaves.add(block // REFS_PER_LEAF)
        return block

    def owned_alone(self, block: int) -> bool:
        """Whether one leaf alone references `block`, now and in the last commit."""
        return self.refs[block] == 1 and block not in self.unsafe

    def free_between(self, lo: int, hi: int) -> list[int]:
        """The free blocks in [lo, hi)."""
        refs = self.refs
        if 0 not in refs[lo:hi]:
            return []
        return [block for block in range(lo, hi) if refs[block] == 0]

    def settle_pending(self) -> list[int]:
        """Count the pending blocks as free in the leaves the coming commit stores, and
        return them; they stay unavailable until `committed`."""
        for block in self.pending:
            self.refs[block] = 0
        return self.pending

    def committed(self) -> None:
        """The new superblock is on disk: the pending blocks may be handed out."""
        self.free += len(self.pending)
        self.pending = []
        self.unsafe.clear()
        self.dirty_leaves.clear()
