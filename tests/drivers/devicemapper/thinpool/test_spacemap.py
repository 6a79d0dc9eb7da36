"""The space maps on their own: counts, allocation and pending frees against a model."""

from __future__ import annotations

from array import array
from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cowstore.drivers.devicemapper.thinpool.errors import BadMetadata, PoolFull
from cowstore.drivers.devicemapper.thinpool.ondisk import SUPERBLOCK_SLOTS
from cowstore.drivers.devicemapper.thinpool.spacemap import (
    PENDING,
    REFS_PER_LEAF,
    DataSpaceMap,
    MetadataSpaceMap,
)

MACHINE_SETTINGS = settings(max_examples=40, stateful_step_count=50, deadline=None)


class MetadataMapMachine(RuleBasedStateMachine):
    """Blocks are free, fresh (allocated since the last commit), committed or pending.

    The model tracks each block's parents and which blocks are fresh; a released
    fresh block is free again at once, a released committed one only after a commit.
    """

    def __init__(self) -> None:
        super().__init__()
        self.map = MetadataSpaceMap(24)
        self.map.recount_free()
        self.parents = dict.fromkeys(range(SUPERBLOCK_SLOTS), 1)
        self.fresh: set[int] = set()
        self.pending: set[int] = set()

    def _live(self) -> list[int]:
        return sorted(block for block in self.parents if block >= SUPERBLOCK_SLOTS)

    @rule()
    def alloc(self) -> None:
        free = 24 - len(self.parents) - len(self.pending)
        if not free:
            with pytest.raises(PoolFull):
                self.map.alloc()
            return
        block = self.map.alloc()
        assert block >= SUPERBLOCK_SLOTS and block not in self.parents and block not in self.pending
        self.parents[block] = 1
        self.fresh.add(block)

    @precondition(lambda self: self._live())
    @rule(data=st.data())
    def add_parent(self, data: st.DataObject) -> None:
        block = data.draw(st.sampled_from(self._live()))
        self.map.counts[block] += 1
        self.parents[block] += 1

    @precondition(lambda self: self._live())
    @rule(data=st.data())
    def drop_parent(self, data: st.DataObject) -> None:
        block = data.draw(st.sampled_from(self._live()))
        if self.parents[block] > 1:
            self.map.counts[block] -= 1
            self.parents[block] -= 1
            return
        self.map.release(block)
        del self.parents[block]
        if block in self.fresh:
            self.fresh.discard(block)
        else:
            self.pending.add(block)

    @rule()
    def commit(self) -> None:
        self.map.committed()
        self.pending.clear()
        self.fresh.clear()

    @invariant()
    def counts_match(self) -> None:
        for block in range(24):
            want = PENDING if block in self.pending else self.parents.get(block, 0)
            assert self.map.counts[block] == want, block
        assert self.map.free == 24 - len(self.parents) - len(self.pending)
        assert self.map.available() == 24 - len(self.parents)
        assert self.map.fresh == self.fresh
        assert sorted(self.map.pending) == sorted(self.pending)

    @invariant()
    def only_lone_fresh_blocks_are_private(self) -> None:
        for block in range(24):
            assert self.map.private(block) == (block in self.fresh and self.parents.get(block) == 1)


TestMetadataSpaceMap = MetadataMapMachine.TestCase
TestMetadataSpaceMap.settings = MACHINE_SETTINGS


class DataMapMachine(RuleBasedStateMachine):
    """References to data blocks as mapping leaves add and drop them, with commits.

    A block shared and then dropped to one reference in the open transaction is
    unsafe (the last commit still shares it) until the next commit.
    """

    def __init__(self) -> None:
        super().__init__()
        self.size = REFS_PER_LEAF + 8  # two count leaves
        self.map = DataSpaceMap(self.size)
        self.map.recount_free()
        self.refs: Counter[int] = Counter()
        self.pending: set[int] = set()
        self.unsafe: set[int] = set()
        self.touched_leaves: set[int] = set()

    def _draw_referenced(self, data: st.DataObject) -> int:
        block = data.draw(st.sampled_from(sorted(self.refs)))
        self.touched_leaves.add(block // REFS_PER_LEAF)
        return block

    @rule()
    def alloc(self) -> None:
        if len(self.refs) + len(self.pending) == self.size:
            with pytest.raises(PoolFull):
                self.map.alloc()
            return
        block = self.map.alloc()
        assert block not in self.refs and block not in self.pending
        self.refs[block] = 1
        self.touched_leaves.add(block // REFS_PER_LEAF)

    @precondition(lambda self: self.refs)
    @rule(data=st.data())
    def share(self, data: st.DataObject) -> None:
        block = self._draw_referenced(data)
        self.map.inc(block)
        self.refs[block] += 1

    @precondition(lambda self: self.refs)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        block = self._draw_referenced(data)
        self.map.dec(block)
        self.refs[block] -= 1
        if not self.refs[block]:
            del self.refs[block]
            self.pending.add(block)
        else:
            self.unsafe.add(block)

    @rule(block=st.integers(0, 2 * REFS_PER_LEAF))
    def claim(self, block: int) -> None:
        if block >= self.size or block in self.pending:
            return
        self.map.claim(block)
        self.refs[block] += 1
        self.touched_leaves.add(block // REFS_PER_LEAF)

    @rule()
    def commit(self) -> None:
        assert self.map.dirty_leaves == self.touched_leaves
        freed = self.map.settle_pending()
        assert sorted(freed) == sorted(self.pending)
        assert self.map.free == self.size - len(self.refs) - len(self.pending)  # not reusable yet
        stored = [self.map.leaf_bytes(leaf) for leaf in range(-(-self.size // REFS_PER_LEAF))]
        assert all(len(raw) == 4096 for raw in stored)
        self.map.committed()
        self.pending.clear()
        self.unsafe.clear()
        self.touched_leaves.clear()
        reopened = DataSpaceMap(self.size)
        for leaf, raw in enumerate(stored):
            reopened.load_leaf(leaf, raw)
        reopened.recount_free()
        assert reopened.refs == self.map.refs and reopened.free == self.map.free

    @rule(extra=st.integers(1, 40))
    def grow(self, extra: int) -> None:
        self.size += extra
        self.map.grow(self.size)

    @invariant()
    def counts_match(self) -> None:
        assert len(self.map.refs) == self.size
        want = array("I", bytes(4 * self.size))
        for block, refs in self.refs.items():
            want[block] = refs
        for block in self.pending:
            want[block] = PENDING
        assert self.map.refs == want
        assert self.map.free == self.size - len(self.refs) - len(self.pending)
        assert self.map.available() == self.size - len(self.refs)
        assert self.map.unsafe == self.unsafe

    @invariant()
    def only_unshared_blocks_are_owned_alone(self) -> None:
        for block in self.refs:
            assert self.map.owned_alone(block) == (self.refs[block] == 1 and block not in self.unsafe)


TestDataSpaceMap = DataMapMachine.TestCase
TestDataSpaceMap.settings = MACHINE_SETTINGS


def test_metadata_allocation_resumes_after_the_last_block_and_wraps() -> None:
    space = MetadataSpaceMap(6)
    space.recount_free()
    assert [space.alloc() for _ in range(3)] == [2, 3, 4]
    space.release(3)  # fresh: free at once, but the search goes on from where it stopped
    assert space.alloc() == 5
    assert space.alloc() == 3  # wrapped around, past the superblock slots
    with pytest.raises(PoolFull):
        space.alloc()


def test_metadata_pointers_outside_the_area_are_corrupt() -> None:
    space = MetadataSpaceMap(8)
    assert space.valid(SUPERBLOCK_SLOTS) == SUPERBLOCK_SLOTS
    for block in (0, SUPERBLOCK_SLOTS - 1, 8):
        with pytest.raises(BadMetadata):
            space.valid(block)


def test_data_allocation_is_sequential_and_skips_pending_blocks() -> None:
    space = DataSpaceMap(4)
    space.recount_free()
    assert [space.alloc() for _ in range(3)] == [0, 1, 2]
    space.dec(1)
    assert space.alloc() == 3
    with pytest.raises(PoolFull):
        space.alloc()  # block 1 stays pending until the commit
    space.settle_pending()
    space.committed()
    assert space.alloc() == 1


def test_free_between_lists_only_unreferenced_blocks() -> None:
    space = DataSpaceMap(10)
    space.recount_free()
    for block in (2, 3, 7):
        space.claim(block)
    space.dec(7)  # pending, not free
    assert space.free_between(0, 10) == [0, 1, 4, 5, 6, 8, 9]
    assert space.free_between(2, 4) == []
