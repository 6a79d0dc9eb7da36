"""The consistency check of an open pool, thin_check's job.

Every reference is recounted from the trees, independently of the counting the pool
does as it goes, and compared with the space maps. Blocks freed in the open
transaction (pending) have no references left: a pending metadata block is not
compared, a pending data block must be unreferenced.
"""

from __future__ import annotations

from array import array

from cowstore.drivers.devicemapper.thinpool.metadata import Metadata
from cowstore.drivers.devicemapper.thinpool.ondisk import SUPERBLOCK_SLOTS
from cowstore.drivers.devicemapper.thinpool.spacemap import PENDING


def check(md: Metadata) -> list[str]:
    """The inconsistencies of `md` (empty: clean)."""
    problems: list[str] = []
    meta = array("I", bytes(4 * md.sb.nr_meta_blocks))
    data = array("I", bytes(4 * md.sb.nr_data_blocks))
    for slot in range(SUPERBLOCK_SLOTS):
        meta[slot] = 1
    for block in md.devtab_blocks:
        meta[block] += 1
    _count_data_count_tree(md, meta)
    for dev in md.devices.values():
        if dev.mapped != sum(1 for _ in md.trees.items(dev.root, dev.depth)):
            problems.append(f"device {dev.dev_id}: mapped count {dev.mapped} is wrong")
        if dev.root:
            problems += _count_device_tree(md, dev.root, dev.depth, meta, data)
    for block, (want, have) in enumerate(zip(meta, md.meta_map.counts, strict=True)):
        if have != PENDING and want != have:
            problems.append(f"metadata block {block}: {want} references, counted {have}")
    for block, (want, have) in enumerate(zip(data, md.data_map.refs, strict=True)):
        if have == PENDING:
            have = 0
        if want != have:
            kind = "leaked" if want < have else "owned more often than counted"
            problems.append(f"data block {block} {kind}: {want} references, counted {have}")
    return problems


def _count_data_count_tree(md: Metadata, meta: array) -> None:
    """Count the parents of the count tree's nodes and of its count leaves."""
    if not md.sb.ref_root:
        return
    stack = [(md.sb.ref_root, md.sb.ref_depth - 1)]
    while stack:
        block, level = stack.pop()
        meta[block] += 1
        for child in md.trees.node(block):
            if child:
                if level:
                    stack.append((child, level - 1))
                else:
                    meta[child] += 1


def _count_device_tree(md: Metadata, root: int, depth: int, meta: array, data: array) -> list[str]:
    """Count a device tree's node parents and data references, descending into each
    node once however many trees share it; returns mappings beyond the data area."""
    problems = []
    stack = [(root, depth - 1)]
    while stack:
        block, level = stack.pop()
        meta[block] += 1
        if meta[block] > 1:
            continue
        for child in md.trees.node(block):
            if not child:
                continue
            if level:
                stack.append((child, level - 1))
            elif child - 1 >= len(data):
                problems.append(f"node {block} maps data block {child - 1} beyond the pool")
            else:
                data[child - 1] += 1
    return problems
