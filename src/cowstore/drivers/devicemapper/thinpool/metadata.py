"""The metadata of an open pool: the last commit, and the open transaction on top of it.

A commit writes every block the transaction allocated (tree nodes, count leaves, a new
device table), syncs, then writes the superblock slot the current superblock is not
in, and syncs again. Until that last write the previous superblock, and all it
reaches, is untouched on disk; blocks freed meanwhile were only pending. A crash at
any moment therefore finds one complete commit or the other.

Opening reads the device table and the data reference counts and recounts the
metadata references from the trees. Data contents are not part of the transaction,
as in dm-thin: a write to a block one device owns alone goes in place.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from cowstore.drivers.devicemapper.thinpool.dataio import fd_size
from cowstore.drivers.devicemapper.thinpool.errors import (
    BadMetadata,
    DeviceExists,
    DeviceNotFound,
    InvalidRequest,
    MinFreeSpace,
    PoolExists,
)
from cowstore.drivers.devicemapper.thinpool.ondisk import (
    DEVICES_PER_BLOCK,
    META_BLOCK,
    SUPERBLOCK_SLOTS,
    Device,
    Superblock,
    pack_devtab_block,
    unpack_devtab_block,
)
from cowstore.drivers.devicemapper.thinpool.radix import FANOUT, RadixTrees, depth_for
from cowstore.drivers.devicemapper.thinpool.spacemap import REFS_PER_LEAF, DataSpaceMap, MetadataSpaceMap

MAX_DEV_ID = 0xFFFFFF
MIN_BLOCK_SIZE = 64 * 1024
MAX_BLOCK_SIZE = 1024**3
_MIN_META_BLOCKS = 16


def read_superblock(meta_fd: int) -> Superblock | None:
    """The newest valid superblock of the metadata area, None when it holds no pool."""
    slots = [Superblock.unpack(os.pread(meta_fd, META_BLOCK, i * META_BLOCK)) for i in range(SUPERBLOCK_SLOTS)]
    valid = [sb for sb in slots if sb is not None]
    return max(valid, key=lambda sb: sb.seq) if valid else None


def format_pool(metadata: str | os.PathLike, data: str | os.PathLike, block_size: int) -> None:
    """Write an empty pool's superblock for `data`; refuses a metadata area that holds a pool."""
    if block_size % MIN_BLOCK_SIZE or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise InvalidRequest(f"invalid block size {block_size}: use a multiple of 64 KiB up to 1 GiB")
    meta_fd = os.open(metadata, os.O_RDWR | os.O_CLOEXEC)
    try:
        data_fd = os.open(data, os.O_RDONLY | os.O_CLOEXEC)
        try:
            nr_data = fd_size(data_fd) // block_size
        finally:
            os.close(data_fd)
        nr_meta = fd_size(meta_fd) // META_BLOCK
        if nr_meta < _MIN_META_BLOCKS:
            raise InvalidRequest(f"metadata area {metadata} is too small: needs at least 64 KiB")
        if read_superblock(meta_fd) is not None:
            raise PoolExists(f"{metadata} already holds a thin pool; delete it to start afresh")
        sb = Superblock(
            seq=2,
            data_block_size=block_size,
            nr_data_blocks=nr_data,
            nr_meta_blocks=nr_meta,
            ref_depth=depth_for(-(-nr_data // REFS_PER_LEAF)),
        )
        os.pwrite(meta_fd, bytes(META_BLOCK), META_BLOCK)
        os.pwrite(meta_fd, sb.pack(), 0)
        os.fsync(meta_fd)
    finally:
        os.close(meta_fd)


@dataclass(frozen=True)
class PoolStatus:
    """What `dmsetup status` reports for a thin-pool target, in blocks."""

    transaction_id: int
    data_block_size: int
    used_data_blocks: int
    total_data_blocks: int
    used_meta_blocks: int
    total_meta_blocks: int
    devices: int


class Metadata:
    """The superblock, device table, trees and space maps of an open pool (not thread-safe:
    the pool serialises every call)."""

    def __init__(self, meta_fd: int, sb: Superblock) -> None:
        nr_meta = fd_size(meta_fd) // META_BLOCK
        if nr_meta < sb.nr_meta_blocks:
            raise BadMetadata(f"metadata area shrank from {sb.nr_meta_blocks} to {nr_meta} blocks")
        sb.nr_meta_blocks = nr_meta
        self._fd = meta_fd
        self.sb = sb
        self.block_size = sb.data_block_size
        self.devices: dict[int, Device] = {}
        self.devtab_blocks: list[int] = []
        self.dirty = False
        self.meta_map = MetadataSpaceMap(nr_meta)
        self.data_map = DataSpaceMap(sb.nr_data_blocks)
        self.trees = RadixTrees(meta_fd, self.meta_map, self.data_map)
        self._load_device_table()
        self._load_data_counts()
        for dev in self.devices.values():
            if dev.root:
                self.trees.count_parents(dev.root, dev.depth - 1)
        self.meta_map.recount_free()
        self.data_map.recount_free()
        self._deepest = self._measure_deepest()

    def close(self) -> None:
        os.close(self._fd)

    def _load_device_table(self) -> None:
        block = self.sb.devtab_root
        while block:
            self.meta_map.counts[self.meta_map.valid(block)] += 1
            self.devtab_blocks.append(block)
            block, devices = unpack_devtab_block(os.pread(self._fd, META_BLOCK, block * META_BLOCK))
            for dev in devices:
                self.devices[dev.dev_id] = dev
        if len(self.devices) != self.sb.devices:
            raise BadMetadata(f"device table lists {len(self.devices)} devices, superblock {self.sb.devices}")

    def _load_data_counts(self) -> None:
        sb = self.sb
        if not sb.ref_root:
            return
        self.trees.count_parents(sb.ref_root, sb.ref_depth - 1)
        for leaf, block in self.trees.items(sb.ref_root, sb.ref_depth):
            self.meta_map.counts[self.meta_map.valid(block)] += 1
            self.data_map.load_leaf(leaf, os.pread(self._fd, META_BLOCK, block * META_BLOCK))

    # ------------------------------------------------------------------ space

    def needs_commit_for_metadata(self) -> bool:
        """Whether free metadata blocks run low while pending ones wait for a commit.

        The reserve is a few paths of a tree deep enough for every data block, plus
        room for the device table: committing early turns pending blocks into free
        ones before a write needs them.
        """
        return self.meta_map.free < 4 * depth_for(self.sb.nr_data_blocks) + 8 and bool(self.meta_map.pending)

    def metadata_exhausted(self) -> bool:
        """Whether too few metadata blocks are free for one more change and its commit:
        a change shadows one path of a device tree and of the count tree."""
        return self.meta_map.free < 2 * (self._deepest + 2)

    def _measure_deepest(self) -> int:
        return max([dev.depth for dev in self.devices.values()] + [self.sb.ref_depth])

    def _devices_changed(self) -> None:
        """Devices, or the depth of a tree, changed: the transaction has something to
        commit, and the deepest tree is measured again here rather than at every
        allocation (which would cost a pass over all devices per block written)."""
        self.dirty = True
        self._deepest = self._measure_deepest()

    def check_min_free(self, pct: int) -> None:
        """Refuse a new device when free data or metadata is below `pct` percent
        (Docker's dm.min_free_space, in its wording)."""
        if not pct:
            return
        for kind, space, total, free in (
            ("data", "space", self.sb.nr_data_blocks, self.data_map.available()),
            ("metadata", "metadata space", self.sb.nr_meta_blocks, self.meta_map.available()),
        ):
            need = max(1, total * pct // 100)
            if free < need:
                raise MinFreeSpace(
                    f"Thin Pool has {free} free {kind} blocks which is less than minimum required "
                    f"{need} free {kind} blocks. Create more free {space} in thin pool or use "
                    f"dm.min_free_space option to change behavior"
                )

    def status(self) -> PoolStatus:
        sb = self.sb
        return PoolStatus(
            transaction_id=sb.transaction_id,
            data_block_size=self.block_size,
            used_data_blocks=sb.nr_data_blocks - self.data_map.available(),
            total_data_blocks=sb.nr_data_blocks,
            used_meta_blocks=sb.nr_meta_blocks - self.meta_map.available(),
            total_meta_blocks=sb.nr_meta_blocks,
            devices=len(self.devices),
        )

    def grow_data(self, nr_blocks: int) -> None:
        """Take in data blocks up to `nr_blocks` (the data area grew)."""
        sb = self.sb
        if nr_blocks <= sb.nr_data_blocks:
            return
        self.data_map.grow(nr_blocks)
        sb.nr_data_blocks = nr_blocks
        leaves = -(-nr_blocks // REFS_PER_LEAF)
        while FANOUT**sb.ref_depth < leaves:
            if sb.ref_root:
                sb.ref_root = self.trees.new_node(first=sb.ref_root)
            sb.ref_depth += 1
        self._devices_changed()

    # ---------------------------------------------------------------- devices

    def device(self, dev_id: int) -> Device:
        dev = self.devices.get(dev_id)
        if dev is None:
            raise DeviceNotFound(f"thin device {dev_id} does not exist in the pool")
        return dev

    def check_new_id(self, dev_id: int) -> None:
        if not 0 <= dev_id <= MAX_DEV_ID:
            raise InvalidRequest(f"invalid thin device id {dev_id}: use 0 to {MAX_DEV_ID}")
        if dev_id in self.devices:
            raise DeviceExists(f"thin device {dev_id} already exists in the pool")

    def add_thin(self, dev_id: int, blocks: int) -> None:
        """A new empty device of `blocks` blocks."""
        sb = self.sb
        self.devices[dev_id] = Device(
            dev_id=dev_id,
            size=blocks * self.block_size,
            depth=depth_for(blocks),
            transaction=sb.transaction_id,
            creation_time=sb.time,
            snap_time=sb.time,
        )
        self._devices_changed()

    def add_snapshot(self, dev_id: int, origin: Device) -> None:
        """A new device sharing the origin's tree: one more parent for its root."""
        sb = self.sb
        if origin.root:
            self.meta_map.counts[origin.root] += 1
        sb.time += 1
        origin.snap_time = sb.time
        self.devices[dev_id] = replace(
            origin, dev_id=dev_id, transaction=sb.transaction_id, creation_time=sb.time, snap_time=sb.time
        )
        self._devices_changed()

    def add_imported(self, dev: Device) -> Device:
        """An empty device with the facts of `dev` (restoring a dump), sized to whole blocks."""
        blocks = -(-dev.size // self.block_size)
        dev = replace(dev, size=blocks * self.block_size, depth=depth_for(blocks), root=0, mapped=0)
        self.devices[dev.dev_id] = dev
        self._devices_changed()
        return dev

    def remove(self, dev: Device) -> None:
        """Forget a device; its tree loses a parent, freeing what nobody else uses."""
        if dev.root:
            self.trees.drop(dev.root, dev.depth - 1)
        del self.devices[dev.dev_id]
        self._devices_changed()

    def grow_device(self, dev: Device, blocks: int) -> None:
        """Make `dev` `blocks` blocks long, adding levels above its root as needed."""
        while FANOUT**dev.depth < blocks:
            if dev.root:
                dev.root = self.trees.new_node(first=dev.root)
            dev.depth += 1
        dev.size = blocks * self.block_size
        self._devices_changed()

    # --------------------------------------------------------------- mappings

    def data_block(self, dev: Device, vblock: int) -> int:
        """The data block `vblock` is mapped to, -1 if none (what a read needs)."""
        return self.trees.lookup(dev.root, dev.depth, vblock)[0] - 1

    def lookup(self, dev: Device, vblock: int) -> tuple[int, bool]:
        """(data block or -1, whether the device alone owns it and may write in place)."""
        value, private = self.trees.lookup(dev.root, dev.depth, vblock)
        if not value:
            return -1, False
        data = value - 1
        return data, private and self.data_map.owned_alone(data)

    def mapped(self, dev: Device, lo: int = 0, hi: int | None = None) -> Iterator[tuple[int, int]]:
        """(virtual block, data block) of every mapped block in [lo, hi), ascending."""
        for vblock, value in self.trees.items(dev.root, dev.depth, lo, hi):
            yield vblock, value - 1

    def remap(self, dev: Device, vblock: int, fill: Callable[[int, int], None]) -> int:
        """Map `vblock` to a newly allocated data block and return it.

        `fill(old, new)` prepares the new block from the old one (-1: none); if it
        fails, the new block is freed again and the mapping is left as it was.
        """
        dev.root, leaf = self.trees.private_path(dev.root, dev.depth, vblock)
        index = vblock % FANOUT
        self.dirty = True
        old = leaf[index] - 1
        new = self.data_map.alloc()
        try:
            fill(old, new)
        except BaseException:
            self.data_map.dec(new)  # never mapped: free again, not leaked
            raise
        if old >= 0:
            self.data_map.dec(old)
        else:
            dev.mapped += 1
        leaf[index] = new + 1
        return new

    def unmap(self, dev: Device, vblock: int) -> None:
        """Unmap a mapped block, dropping the device's reference to its data block."""
        dev.root, leaf = self.trees.private_path(dev.root, dev.depth, vblock)
        index = vblock % FANOUT
        self.data_map.dec(leaf[index] - 1)
        leaf[index] = 0
        dev.mapped -= 1
        self.dirty = True

    def map_imported(self, dev: Device, vblock: int, data: int) -> None:
        """Map `vblock` to data block `data` as a dump says (free or shared alike)."""
        if not 0 <= vblock < dev.size // self.block_size or not 0 <= data < self.sb.nr_data_blocks:
            raise BadMetadata(f"mapping {vblock} -> {data} of device {dev.dev_id} is out of range")
        dev.root, leaf = self.trees.private_path(dev.root, dev.depth, vblock)
        index = vblock % FANOUT
        if leaf[index]:
            raise BadMetadata(f"virtual block {vblock} of device {dev.dev_id} is mapped twice")
        self.data_map.claim(data)
        leaf[index] = data + 1
        dev.mapped += 1
        self.dirty = True

    # ----------------------------------------------------------------- commit

    def commit(self, sync_data: Callable[[], None]) -> list[int]:
        """Write the open transaction and make it the committed state; returns the data
        blocks it freed. `sync_data` makes the data area durable before the superblock
        is written, so no committed mapping points at bytes a crash would lose."""
        devices = sorted(self.devices.values(), key=lambda d: d.dev_id)
        new_devtab: list[int] = []
        following = 0
        for start in reversed(range(0, len(devices), DEVICES_PER_BLOCK)):
            following = self.trees.new_block(pack_devtab_block(following, devices[start : start + DEVICES_PER_BLOCK]))
            new_devtab.append(following)
        new_devtab.reverse()
        for block in self.devtab_blocks:
            self.trees.release(block)
        self.devtab_blocks = new_devtab
        freed = self.data_map.settle_pending()
        for leaf in sorted(self.data_map.dirty_leaves):
            self._store_count_leaf(leaf)
        self.trees.write_fresh()
        sync_data()
        os.fsync(self._fd)
        sb = self.sb
        new_sb = replace(sb, seq=sb.seq + 1, devtab_root=new_devtab[0] if new_devtab else 0, devices=len(devices))
        os.pwrite(self._fd, new_sb.pack(), (new_sb.seq % SUPERBLOCK_SLOTS) * META_BLOCK)
        os.fsync(self._fd)
        self.sb = new_sb
        self.trees.committed()
        self.meta_map.committed()
        self.data_map.committed()
        self.dirty = False
        return freed

    def _store_count_leaf(self, leaf: int) -> None:
        sb = self.sb
        block = self.trees.new_block(self.data_map.leaf_bytes(leaf))
        sb.ref_root, node = self.trees.private_path(sb.ref_root, sb.ref_depth, leaf)
        old = node[leaf % FANOUT]
        node[leaf % FANOUT] = block
        if old:
            self.trees.release(old)
