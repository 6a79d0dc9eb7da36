"""The copy-on-write radix trees on their own, against a dict per tree.

Trees are changed the way the pool changes device trees: through `private_path`,
with snapshots sharing a root and deletes dropping one. After every step the node
parents and data references are recounted from scratch and compared with the space
maps; at every commit, the last committed trees are read back cold from the file
while the next transaction's blocks are already written, as a crash would leave it.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from array import array
from collections.abc import Iterator

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cowstore.drivers.devicemapper.thinpool.ondisk import META_BLOCK, SUPERBLOCK_SLOTS
from cowstore.drivers.devicemapper.thinpool.radix import FANOUT, RadixTrees, depth_for
from cowstore.drivers.devicemapper.thinpool.spacemap import PENDING, DataSpaceMap, MetadataSpaceMap

META_BLOCKS = 1024
DATA_BLOCKS = 4096
DEPTH = 2
# keys in a few leaves, first and last entries of a leaf included, and one far away
KEYS = st.one_of(st.integers(0, 2 * FANOUT + 1), st.sampled_from([FANOUT - 1, FANOUT, FANOUT**DEPTH - 1]))


class Store:
    """A metadata file, its two space maps and the trees over them."""

    def __init__(self, path: pathlib.Path, meta_blocks: int = META_BLOCKS) -> None:
        with open(path, "wb") as f:
            f.truncate(meta_blocks * META_BLOCK)
        self.fd = os.open(path, os.O_RDWR)
        self.meta = MetadataSpaceMap(meta_blocks)
        self.meta.recount_free()
        self.data = DataSpaceMap(DATA_BLOCKS)
        self.data.recount_free()
        self.trees = RadixTrees(self.fd, self.meta, self.data)

    def put(self, root: int, key: int, data: int) -> int:
        """Map `key` to data block `data` (a reference the caller took); the new root."""
        root, leaf = self.trees.private_path(root, DEPTH, key)
        old = leaf[key % FANOUT]
        if old:
            self.data.dec(old - 1)
        leaf[key % FANOUT] = data + 1
        return root

    def commit(self) -> None:
        self.trees.write_fresh()
        self.trees.committed()
        self.data.settle_pending()
        self.meta.committed()
        self.data.committed()

    def cold(self) -> RadixTrees:
        """Trees that read every node from the file, as after a crash."""
        return RadixTrees(self.fd, MetadataSpaceMap(len(self.meta.counts)), DataSpaceMap(DATA_BLOCKS))

    def close(self) -> None:
        os.close(self.fd)


def recount(trees: RadixTrees, roots: list[int], meta_blocks: int) -> tuple[array, array]:
    """Parents of each metadata block and references to each data block, from the roots alone."""
    meta = array("I", bytes(4 * meta_blocks))
    data = array("I", bytes(4 * DATA_BLOCKS))
    for slot in range(SUPERBLOCK_SLOTS):
        meta[slot] = 1
    stack = [(root, DEPTH - 1) for root in roots if root]
    while stack:
        block, level = stack.pop()
        meta[block] += 1
        if meta[block] > 1:
            continue
        for child in trees.node(block):
            if child and level:
                stack.append((child, level - 1))
            elif child:
                data[child - 1] += 1
    return meta, data


class TreeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="cowstore-radix-")
        self.store = Store(pathlib.Path(self.tmp.name) / "metadata")
        self.roots: dict[int, int] = {0: 0}
        self.models: dict[int, dict[int, int]] = {0: {}}
        self.next_tree = 1
        self.committed: dict[int, tuple[int, dict[int, int]]] = {}

    def teardown(self) -> None:
        self.store.close()
        self.tmp.cleanup()

    def _mapped(self) -> list[int]:
        return sorted({data for model in self.models.values() for data in model.values()})

    @rule(tree=st.integers(0, 7), key=KEYS, share=st.booleans(), data=st.data())
    def put(self, tree: int, key: int, share: bool, data: st.DataObject) -> None:
        tree = self._pick(tree)
        mapped = self._mapped()
        if share and mapped:
            block = data.draw(st.sampled_from(mapped))
            self.store.data.inc(block)
        else:
            block = self.store.data.alloc()
        self.roots[tree] = self.store.put(self.roots[tree], key, block)
        self.models[tree][key] = block
        assert self.store.trees.lookup(self.roots[tree], DEPTH, key) == (block + 1, True)

    @rule(tree=st.integers(0, 7), key=KEYS)
    def remove(self, tree: int, key: int) -> None:
        tree = self._pick(tree)
        if key not in self.models[tree]:
            return
        root, leaf = self.store.trees.private_path(self.roots[tree], DEPTH, key)
        self.store.data.dec(leaf[key % FANOUT] - 1)
        leaf[key % FANOUT] = 0
        self.roots[tree] = root
        del self.models[tree][key]

    @precondition(lambda self: len(self.roots) < 8)
    @rule(tree=st.integers(0, 7))
    def snapshot(self, tree: int) -> None:
        tree = self._pick(tree)
        root = self.roots[tree]
        if root:
            self.store.meta.counts[root] += 1
        self.roots[self.next_tree] = root
        self.models[self.next_tree] = dict(self.models[tree])
        self.next_tree += 1

    @precondition(lambda self: len(self.roots) > 1)
    @rule(tree=st.integers(0, 7))
    def drop(self, tree: int) -> None:
        tree = self._pick(tree)
        if self.roots[tree]:
            self.store.trees.drop(self.roots[tree], DEPTH - 1)
        del self.roots[tree], self.models[tree]

    @rule()
    def commit(self) -> None:
        self.store.trees.write_fresh()  # the next state's blocks are on disk, its superblock is not yet
        cold = self.store.cold()
        for tree, (root, model) in self.committed.items():
            assert dict(cold.items(root, DEPTH)) == {key: data + 1 for key, data in model.items()}, tree
        self.store.commit()
        self.committed = {tree: (self.roots[tree], dict(self.models[tree])) for tree in self.roots}

    @rule(tree=st.integers(0, 7), lo=st.integers(0, 3 * FANOUT), length=st.integers(0, 2 * FANOUT))
    def items_in_range(self, tree: int, lo: int, length: int) -> None:
        tree = self._pick(tree)
        want = sorted((key, data + 1) for key, data in self.models[tree].items() if lo <= key < lo + length)
        assert list(self.store.trees.items(self.roots[tree], DEPTH, lo, lo + length)) == want

    def _pick(self, tree: int) -> int:
        trees = sorted(self.roots)
        return trees[tree % len(trees)]

    @invariant()
    def trees_match_their_models(self) -> None:
        for tree, root in self.roots.items():
            model = self.models[tree]
            assert list(self.store.trees.items(root, DEPTH)) == sorted((k, d + 1) for k, d in model.items())
            for key in (*model, FANOUT + 7):
                assert self.store.trees.lookup(root, DEPTH, key)[0] == model.get(key, -1) + 1

    @invariant()
    def counts_match_a_recount(self) -> None:
        meta, data = recount(self.store.trees, list(self.roots.values()), META_BLOCKS)
        counted, refs = array("I", self.store.meta.counts), array("I", self.store.data.refs)
        for block in self.store.meta.pending:
            assert counted[block] == PENDING
            counted[block] = 0
        for block in self.store.data.pending:
            assert refs[block] == PENDING
            refs[block] = 0
        assert counted == meta
        assert refs == data
        assert all(self.store.meta.counts[block] for block in self.store.meta.fresh)


TestTrees = TreeMachine.TestCase
TestTrees.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[Store]:
    s = Store(tmp_path / "metadata")
    yield s  # pytest closes it after the test, passed or failed
    s.close()


def test_depth_covers_the_keys() -> None:
    assert [depth_for(n) for n in (1, FANOUT, FANOUT + 1, FANOUT**2, FANOUT**2 + 1)] == [1, 1, 2, 2, 3]


def test_a_shared_path_is_shadowed_once_then_changed_in_place(store: Store) -> None:
    root = store.put(0, 5, store.data.alloc())
    store.commit()
    store.meta.counts[root] += 1  # a snapshot shares the root
    assert store.trees.lookup(root, DEPTH, 5)[1] is False
    mine = store.put(root, 6, store.data.alloc())
    assert mine != root and store.meta.counts[root] == 1  # the other owner keeps the original
    assert store.trees.lookup(root, DEPTH, 6)[0] == 0
    assert store.trees.lookup(mine, DEPTH, 5)[0] == store.trees.lookup(root, DEPTH, 5)[0]
    assert store.put(mine, 7, store.data.alloc()) == mine  # fresh and private now: no second copy


def test_growing_a_tree_keeps_its_keys(store: Store) -> None:
    root = store.put(0, 3, store.data.alloc())
    taller = store.trees.new_node(first=root)
    assert list(store.trees.items(taller, DEPTH + 1)) == list(store.trees.items(root, DEPTH))


def test_write_fresh_writes_raw_blocks_and_nodes(store: Store) -> None:
    raw = store.trees.new_block(b"r" * META_BLOCK)
    root = store.put(0, 1, store.data.alloc())
    store.commit()
    cold = store.cold()
    assert os.pread(store.fd, META_BLOCK, raw * META_BLOCK) == b"r" * META_BLOCK
    assert list(cold.items(root, DEPTH)) == [(1, 1)]
