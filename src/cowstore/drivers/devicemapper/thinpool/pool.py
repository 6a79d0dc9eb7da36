"""The thin pool engine: dm-thin's model of block-level copy-on-write, in userspace.

A pool is a data area cut into blocks (64 KiB by default) and a metadata area of
4 KiB blocks. Each thin device maps its virtual blocks to data blocks through a radix
tree (512 children per node) whose root sits in the device table. A snapshot shares
the origin's root; nodes carry reference counts (number of parents) and data blocks
reference counts (number of leaves pointing at them). Sharing is pushed down lazily,
as dm-thin does: copying a node that has several parents gives each of its children
one more parent, so the counts stay exact without touching the whole tree at
snapshot time, and a write that finds a data block with more than one owner copies
it (CoW) before writing.

Crash safety: nodes, reference-count leaves and the device table are written
copy-on-write to blocks the committed state does not use, and blocks freed in the
open transaction are quarantined until the next commit, so a crash at any moment
leaves the last committed superblock and everything it reaches intact. Metadata
block reference counts are not stored: they are recounted from the trees at open,
which makes leaked metadata blocks impossible by construction. Data block counts
are stored (in a CoW radix tree of 1024-count leaves) so opening a big pool does not
read every leaf. Data contents, like dm-thin's, are not versioned: a write to a
block the device owns alone goes in place.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import mmap
import os
import stat
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from cowstore.drivers.devicemapper.thinpool.errors import (
    BadMetadata,
    DeviceExists,
    DeviceNotFound,
    InvalidRequest,
    MinFreeSpace,
    OutOfRange,
    PoolExists,
    PoolFull,
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
from cowstore.host.fsutil import punch_hole

FANOUT = 512
SHIFT = 9
MASK = FANOUT - 1
REFS_PER_LEAF = META_BLOCK // 4
MAX_DEV_ID = 0xFFFFFF
MIN_BLOCK_SIZE = 64 * 1024
MAX_BLOCK_SIZE = 1024 ** 3
_PENDING = 0xFFFFFFFF  # count of a block freed in the open transaction (not reusable yet)
_ZERO_NODE = bytes(META_BLOCK)
_WRITE_BUFFER = 1 << 20  # the largest FUSE write request

def open_direct(fd: int) -> int:
    """A second, O_DIRECT descriptor of the open file `fd`; -1 where the filesystem refuses it."""
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return -1


def _fd_size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


def _depth_for(count: int) -> int:
    depth = 1
    while FANOUT ** depth < count:
        depth += 1
    return depth


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


class ThinPool:
    """An open pool. Thread-safe: every public method runs under one lock."""

    def __init__(self, meta_fd: int, data_fd: int, sb: Superblock, *, no_space_policy: str,
                 queue_timeout: float, min_free_pct: int, scrub: bool = True, discard_passdown: bool = True) -> None:
        if no_space_policy not in ("error", "queue"):
            raise InvalidRequest(f"invalid no-space policy {no_space_policy!r}: use 'error' or 'queue'")
        if not 0 <= min_free_pct <= 99:
            raise InvalidRequest(f"invalid minimum free space {min_free_pct}%: use 0 to 99")
        self._meta_fd = meta_fd
        self._data_fd = data_fd
        self._direct_fd = -1  # opened once the pool has loaded (a failed open closes only the two others)
        self._sb = sb
        self.block_size = sb.data_block_size
        self.no_space_policy = no_space_policy
        self.queue_timeout = queue_timeout
        self.min_free_pct = min_free_pct
        self.discard_passdown = discard_passdown
        self._lock = threading.RLock()
        self._space = threading.Condition(self._lock)
        self._io_inflight = 0  # reads and writes copying data outside the pool lock
        self._io_idle = threading.Condition(threading.Lock())
        self._buffers: list[memoryview] = []  # page-aligned, for O_DIRECT writes
        self._nodes: dict[int, array] = {}
        self._raw: dict[int, bytes] = {}  # fresh device-table and count-leaf blocks
        self._fresh: set[int] = set()
        self._meta_pending: list[int] = []
        self._data_pending: list[int] = []
        self._unsafe: set[int] = set()  # shared at the last commit: never overwrite in place
        self._ref_dirty: set[int] = set()
        self._devtab_blocks: list[int] = []
        self._devices: dict[int, Device] = {}
        self._dirty = False
        self._meta_cursor = SUPERBLOCK_SLOTS
        self._data_cursor = 0
        self._closed = False
        mode = os.fstat(data_fd).st_mode
        self.data_is_file = stat.S_ISREG(mode)
        self._zeroed_free = self.data_is_file and discard_passdown
        self._load(scrub)
        self._direct_fd = open_direct(data_fd)

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def format(cls, metadata: str | os.PathLike, data: str | os.PathLike, *,
               block_size: int = MIN_BLOCK_SIZE) -> None:
        """Write an empty pool's superblock; refuses a metadata area that holds a pool."""
        if block_size % MIN_BLOCK_SIZE or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
            raise InvalidRequest(f"invalid block size {block_size}: use a multiple of 64 KiB up to 1 GiB")
        meta_fd = os.open(metadata, os.O_RDWR | os.O_CLOEXEC)
        try:
            data_fd = os.open(data, os.O_RDONLY | os.O_CLOEXEC)
            try:
                nr_data = _fd_size(data_fd) // block_size
            finally:
                os.close(data_fd)
            nr_meta = _fd_size(meta_fd) // META_BLOCK
            if nr_meta < 16:
                raise InvalidRequest(f"metadata area {metadata} is too small: needs at least 64 KiB")
            if cls._read_superblock(meta_fd) is not None:
                raise PoolExists(f"{metadata} already holds a thin pool; delete it to start afresh")
            sb = Superblock(seq=2, data_block_size=block_size, nr_data_blocks=nr_data,
                            nr_meta_blocks=nr_meta, ref_depth=_depth_for(-(-nr_data // REFS_PER_LEAF)))
            os.pwrite(meta_fd, _ZERO_NODE, META_BLOCK)
            os.pwrite(meta_fd, sb.pack(), 0)
            os.fsync(meta_fd)
        finally:
            os.close(meta_fd)

    @classmethod
    def open(cls, metadata: str | os.PathLike, data: str | os.PathLike, *, no_space_policy: str = "error",
             queue_timeout: float = 60.0, min_free_pct: int = 10, scrub: bool = True,
             discard_passdown: bool = True) -> ThinPool:
        """Open a formatted pool at its last commit.

        `scrub` punches free blocks that still hold data; restoring a dump onto a data
        area whose blocks are about to be mapped again turns it off. Without
        `discard_passdown` (dm-thin's no_discard_passdown, Docker's dm.blkdiscard=false),
        freed blocks stay allocated in the data area instead of being punched out.
        """
        meta_fd = os.open(metadata, os.O_RDWR | os.O_CLOEXEC)
        try:
            data_fd = os.open(data, os.O_RDWR | os.O_CLOEXEC)
        except BaseException:
            os.close(meta_fd)
            raise
        try:
            sb = cls._read_superblock(meta_fd)
            if sb is None:
                raise BadMetadata(f"{metadata} holds no valid thin pool superblock")
            return cls(meta_fd, data_fd, sb, no_space_policy=no_space_policy,
                       queue_timeout=queue_timeout, min_free_pct=min_free_pct, scrub=scrub,
                       discard_passdown=discard_passdown)
        except BaseException:
            os.close(meta_fd)
            os.close(data_fd)
            raise

    @staticmethod
    def _read_superblock(meta_fd: int) -> Superblock | None:
        slots = [Superblock.unpack(os.pread(meta_fd, META_BLOCK, i * META_BLOCK)) for i in range(SUPERBLOCK_SLOTS)]
        valid = [sb for sb in slots if sb is not None]
        return max(valid, key=lambda sb: sb.seq) if valid else None

    def close(self) -> None:
        """Commit and release the files."""
        with self._lock:
            if self._closed:
                return
            self._io_outside_lock()
            try:
                if self._dirty:
                    self._commit()
            finally:
                self._close_files()

    def abandon(self) -> None:
        """Close without committing, as a crash would (tests and error paths)."""
        with self._lock:
            if not self._closed:
                self._io_outside_lock()
                self._close_files()

    def _close_files(self) -> None:
        self._closed = True
        for fd in (self._meta_fd, self._data_fd, self._direct_fd):
            if fd >= 0:
                os.close(fd)

    def __enter__(self) -> ThinPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------- loading

    def _check_meta_block(self, block: int) -> int:
        if not SUPERBLOCK_SLOTS <= block < self._sb.nr_meta_blocks:
            raise BadMetadata(f"metadata block pointer {block} out of range")
        return block

    def _load(self, scrub: bool) -> None:
        sb = self._sb
        nr_meta = _fd_size(self._meta_fd) // META_BLOCK
        if nr_meta < sb.nr_meta_blocks:
            raise BadMetadata(f"metadata area shrank from {sb.nr_meta_blocks} to {nr_meta} blocks")
        sb.nr_meta_blocks = nr_meta
        self._meta_count = array("I", bytes(4 * nr_meta))
        for slot in range(SUPERBLOCK_SLOTS):
            self._meta_count[slot] = 1
        block = sb.devtab_root
        while block:
            self._check_meta_block(block)
            self._meta_count[block] += 1
            self._devtab_blocks.append(block)
            block, devices = unpack_devtab_block(os.pread(self._meta_fd, META_BLOCK, block * META_BLOCK))
            for dev in devices:
                self._devices[dev.dev_id] = dev
        if len(self._devices) != sb.devices:
            raise BadMetadata(f"device table lists {len(self._devices)} devices, superblock {sb.devices}")
        self._data_ref = array("I", bytes(4 * sb.nr_data_blocks))
        self._load_refcounts()
        for dev in self._devices.values():
            if dev.root:
                self._count_tree(dev.root, dev.depth - 1)
        self._meta_free = self._meta_count.count(0)
        self._data_free = self._data_ref.count(0)
        data_blocks = _fd_size(self._data_fd) // self.block_size
        if data_blocks < sb.nr_data_blocks:
            raise BadMetadata(f"data area shrank from {sb.nr_data_blocks} to {data_blocks} blocks")
        if data_blocks > sb.nr_data_blocks:
            self._grow(data_blocks)
        if self._zeroed_free and scrub:
            self._scrub_free_blocks()

    def _load_refcounts(self) -> None:
        sb = self._sb
        if not sb.ref_root:
            return
        stack = [(sb.ref_root, sb.ref_depth - 1, 0)]
        while stack:
            block, level, base = stack.pop()
            self._meta_count[self._check_meta_block(block)] += 1
            node = self._node(block)
            span = FANOUT ** level
            for i, child in enumerate(node):
                if not child:
                    continue
                if level:
                    stack.append((child, level - 1, base + i * span))
                    continue
                self._meta_count[self._check_meta_block(child)] += 1
                leaf = base + i
                counts = array("I")
                counts.frombytes(os.pread(self._meta_fd, META_BLOCK, child * META_BLOCK))
                lo = leaf * REFS_PER_LEAF
                hi = min(lo + REFS_PER_LEAF, sb.nr_data_blocks)
                if hi > lo:
                    self._data_ref[lo:hi] = counts[: hi - lo]

    def _count_tree(self, root: int, level: int) -> None:
        """Add one parent to `root`, descending into nodes seen for the first time."""
        stack = [(root, level)]
        count = self._meta_count
        while stack:
            block, lvl = stack.pop()
            self._check_meta_block(block)
            seen = count[block]
            count[block] = seen + 1
            if seen == 0 and lvl > 0:
                stack.extend((child, lvl - 1) for child in self._node(block) if child)

    def _scrub_free_blocks(self) -> None:
        """Punch free blocks that still hold data (a crash between commit and punch)."""
        bs = self.block_size
        end = self._sb.nr_data_blocks * bs
        offset = 0
        while offset < end:
            try:
                start = os.lseek(self._data_fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    return
                raise
            stop = min(os.lseek(self._data_fd, start, os.SEEK_HOLE), end)
            lo, hi = start // bs, -(-stop // bs)
            if 0 in self._data_ref[lo:hi]:
                self._punch_blocks([b for b in range(lo, hi) if self._data_ref[b] == 0])
            offset = max(stop, start + 1)

    # ------------------------------------------------------------ metadata blocks

    def _node(self, block: int) -> array:
        node = self._nodes.get(block)
        if node is None:
            node = array("Q")
            node.frombytes(os.pread(self._meta_fd, META_BLOCK, block * META_BLOCK))
            if len(node) != FANOUT:
                raise BadMetadata(f"metadata block {block} is beyond the end of the metadata area")
            self._nodes[block] = node
        return node

    def _alloc_meta(self) -> int:
        count = self._meta_count
        try:
            block = count.index(0, self._meta_cursor)
        except ValueError:
            try:
                block = count.index(0, SUPERBLOCK_SLOTS)
            except ValueError:
                raise PoolFull("thin pool metadata area is full: grow the metadata file") from None
        self._meta_cursor = block + 1
        count[block] = 1
        self._meta_free -= 1
        self._fresh.add(block)
        return block

    def _release_meta(self, block: int) -> None:
        """Drop a block whose last parent went away."""
        self._nodes.pop(block, None)
        self._raw.pop(block, None)
        if block in self._fresh:
            self._fresh.discard(block)
            self._meta_count[block] = 0
            self._meta_free += 1
        else:
            self._meta_count[block] = _PENDING
            self._meta_pending.append(block)

    def _new_node(self) -> int:
        block = self._alloc_meta()
        self._nodes[block] = array("Q", _ZERO_NODE)
        return block

    def _shadow(self, block: int, level: int) -> int:
        """A private, writable copy of node `block` (the block itself when already so)."""
        count = self._meta_count
        if block in self._fresh and count[block] == 1:
            return block
        node = self._node(block)
        new = self._alloc_meta()
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
                        self._data_inc(child - 1)
        else:
            self._release_meta(block)
        return new

    def _drop_tree(self, root: int, level: int) -> None:
        """Remove one parent from `root`, freeing what nobody else uses."""
        stack = [(root, level)]
        count = self._meta_count
        while stack:
            block, lvl = stack.pop()
            parents = count[block]
            if parents > 1:
                count[block] = parents - 1
                continue
            node = self._node(block)
            if lvl:
                stack.extend((child, lvl - 1) for child in node if child)
            else:
                for child in node:
                    if child:
                        self._data_dec(child - 1)
            self._release_meta(block)

    # ---------------------------------------------------------------- data blocks

    def _data_inc(self, block: int) -> None:
        self._data_ref[block] += 1
        self._ref_dirty.add(block // REFS_PER_LEAF)

    def _data_dec(self, block: int) -> None:
        refs = self._data_ref[block]
        if refs == 1:
            self._data_ref[block] = _PENDING
            self._data_pending.append(block)
        else:
            self._data_ref[block] = refs - 1
            self._unsafe.add(block)
        self._ref_dirty.add(block // REFS_PER_LEAF)

    def _alloc_data(self) -> int:
        refs = self._data_ref
        try:
            block = refs.index(0, self._data_cursor)
        except ValueError:
            block = refs.index(0)
        self._data_cursor = block + 1
        refs[block] = 1
        self._data_free -= 1
        self._ref_dirty.add(block // REFS_PER_LEAF)
        return block

    def _punch_blocks(self, blocks: list[int]) -> None:
        """Give freed blocks back to the filesystem holding the data area (re-sparsify)."""
        if not self.discard_passdown:
            return
        bs = self.block_size
        runs: list[list[int]] = []
        for block in sorted(blocks):
            if runs and runs[-1][1] == block:
                runs[-1][1] = block + 1
            else:
                runs.append([block, block + 1])
        for lo, hi in runs:
            try:
                punch_hole(self._data_fd, lo * bs, (hi - lo) * bs)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                    raise
                self._zeroed_free = False
                return

    def _ensure_space(self, data: bool, settle: Callable[[], None] | None = None) -> None:
        """Wait (queue policy) or fail (error policy) until a block can be allocated.

        `settle` runs before this commits or lets the lock go while it waits: a write
        that has mapped blocks but not yet written them writes them there, so no commit
        and no other thread ever sees such a block.
        """
        deadline = None
        while True:
            if self._meta_free < 4 * _depth_for(self._sb.nr_data_blocks) + 8 and self._meta_pending:
                if settle:
                    settle()
                self._commit()
            if self._meta_free < 2 * (self._max_depth() + 2):
                raise PoolFull("thin pool metadata area is full: grow the metadata file")
            if not data or self._data_free > 0:
                return
            if settle:
                settle()
            if self._data_pending:
                self._commit()
                continue
            if self._grow_from_backing():
                continue
            if self.no_space_policy == "error":
                raise PoolFull("thin pool is out of data space (no_space_policy=error)")
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.queue_timeout
            if now >= deadline:
                raise PoolFull(f"thin pool stayed out of data space for {self.queue_timeout:g}s (no_space_policy=queue)")
            self._space.wait(min(0.1, deadline - now))

    def _max_depth(self) -> int:
        return max([dev.depth for dev in self._devices.values()] + [self._sb.ref_depth])

    # ------------------------------------------------------------------- growing

    def _grow(self, nr_blocks: int) -> None:
        sb = self._sb
        added = nr_blocks - sb.nr_data_blocks
        if added <= 0:
            return
        self._data_ref.extend(array("I", bytes(4 * added)))
        self._data_free += added
        sb.nr_data_blocks = nr_blocks
        leaves = -(-nr_blocks // REFS_PER_LEAF)
        while FANOUT ** sb.ref_depth < leaves:
            if sb.ref_root:
                root = self._new_node()
                self._nodes[root][0] = sb.ref_root
                sb.ref_root = root
            sb.ref_depth += 1
        self._dirty = True
        self._space.notify_all()

    def _grow_from_backing(self) -> bool:
        blocks = _fd_size(self._data_fd) // self.block_size
        if blocks > self._sb.nr_data_blocks:
            self._grow(blocks)
            return True
        return False

    def resize_data(self, size: int) -> None:
        """Grow the data area to `size` bytes (a file is extended; a device must already be)."""
        with self._lock:
            if size < self._sb.nr_data_blocks * self.block_size:
                raise InvalidRequest("the data area cannot shrink")
            if self.data_is_file and _fd_size(self._data_fd) < size:
                os.ftruncate(self._data_fd, size)
            self._grow_from_backing()
            self._commit()

    # ------------------------------------------------------------------- commits

    def flush(self) -> None:
        """Make every completed write durable and commit the metadata (FLUSH/FUA)."""
        with self._lock:
            if self._dirty:
                self._commit()
            else:
                os.fdatasync(self._data_fd)

    def _commit(self) -> None:
        # Mapped blocks must hold their data before the mapping is committed, and the
        # freed blocks become reusable (and are punched) below.
        self._io_outside_lock()
        sb = self._sb
        old_devtab = self._devtab_blocks
        devices = sorted(self._devices.values(), key=lambda d: d.dev_id)
        chunks = [devices[i:i + DEVICES_PER_BLOCK] for i in range(0, len(devices), DEVICES_PER_BLOCK)]
        new_devtab = [self._alloc_meta() for _ in chunks]
        for i, chunk in enumerate(chunks):
            nxt = new_devtab[i + 1] if i + 1 < len(new_devtab) else 0
            self._raw[new_devtab[i]] = pack_devtab_block(nxt, chunk)
        for block in old_devtab:
            self._release_meta(block)
        self._devtab_blocks = new_devtab
        freed_data = self._data_pending
        for block in freed_data:
            self._data_ref[block] = 0
        for leaf in sorted(self._ref_dirty):
            self._store_ref_leaf(leaf)
        for block in self._fresh:
            payload = self._raw.get(block)
            if payload is None:
                payload = self._nodes[block].tobytes()
            os.pwrite(self._meta_fd, payload, block * META_BLOCK)
        os.fdatasync(self._data_fd)
        os.fsync(self._meta_fd)
        new_sb = replace(sb, seq=sb.seq + 1, devtab_root=new_devtab[0] if new_devtab else 0,
                         devices=len(devices))
        os.pwrite(self._meta_fd, new_sb.pack(), (new_sb.seq % SUPERBLOCK_SLOTS) * META_BLOCK)
        os.fsync(self._meta_fd)
        self._sb = new_sb
        self._fresh.clear()
        self._raw.clear()
        for block in self._meta_pending:
            self._meta_count[block] = 0
        self._meta_free += len(self._meta_pending)
        self._meta_pending = []
        self._data_pending = []
        self._data_free += len(freed_data)
        self._unsafe.clear()
        self._ref_dirty.clear()
        self._dirty = False
        if self._zeroed_free and freed_data:
            self._punch_blocks(freed_data)
        self._space.notify_all()

    def _store_ref_leaf(self, leaf: int) -> None:
        sb = self._sb
        lo = leaf * REFS_PER_LEAF
        counts = self._data_ref[lo:lo + REFS_PER_LEAF]
        block = self._alloc_meta()
        self._raw[block] = counts.tobytes().ljust(META_BLOCK, b"\0")
        sb.ref_root, node = self._private_path(sb.ref_root, sb.ref_depth, leaf)
        old = node[leaf & MASK]
        node[leaf & MASK] = block
        if old:
            self._release_meta(old)

    # ---------------------------------------------------------------- the trees

    def _device(self, dev_id: int) -> Device:
        dev = self._devices.get(dev_id)
        if dev is None:
            raise DeviceNotFound(f"thin device {dev_id} does not exist in the pool")
        return dev

    def _lookup(self, dev: Device, vblock: int) -> tuple[int, bool]:
        """(data block or -1, whether the device alone owns it and may write in place)."""
        block, level = dev.root, dev.depth - 1
        count = self._meta_count
        alone = True
        while block:
            if count[block] != 1:
                alone = False
            value = self._node(block)[(vblock >> (SHIFT * level)) & MASK]
            if not level:
                if not value:
                    return -1, False
                data = value - 1
                return data, alone and self._data_ref[data] == 1 and data not in self._unsafe
            block, level = value, level - 1
        return -1, False

    def _leaf_for_write(self, dev: Device, vblock: int) -> tuple[array, int]:
        """The private leaf node holding `vblock`'s entry, shadowing the path to it."""
        dev.root, node = self._private_path(dev.root, dev.depth, vblock)
        return node, vblock & MASK

    def _private_path(self, root: int, depth: int, key: int) -> tuple[int, array]:
        """Shadow (copy-on-write) every node from `root` down to the leaf holding `key`.

        Returns the new root and that leaf, which this transaction may now change in
        place; nodes still shared with the last commit or other devices are left alone.
        """
        level = depth - 1
        root = self._shadow(root, level) if root else self._new_node()
        node = self._nodes[root]
        while level:
            index = (key >> (SHIFT * level)) & MASK
            child = node[index]
            child = self._shadow(child, level - 1) if child else self._new_node()
            node[index] = child
            node = self._nodes[child]
            level -= 1
        return root, node

    def _iter_mapped(self, dev: Device, lo: int = 0, hi: int | None = None) -> Iterator[tuple[int, int]]:
        """(virtual block, data block) of every mapped block in [lo, hi), ascending."""
        if hi is None:
            hi = FANOUT ** dev.depth
        if not dev.root:
            return
        stack = [(dev.root, dev.depth - 1, 0)]
        while stack:
            block, level, base = stack.pop()
            node = self._node(block)
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
                        yield base + i, node[i] - 1

    # ------------------------------------------------------------ device control

    def _check_free_space(self) -> None:
        pct = self.min_free_pct
        if not pct:
            return
        for kind, space, total, free in (
                ("data", "space", self._sb.nr_data_blocks, self._data_free + len(self._data_pending)),
                ("metadata", "metadata space", self._sb.nr_meta_blocks, self._meta_free + len(self._meta_pending))):
            need = max(1, total * pct // 100)
            if free < need:  # Docker's wording
                raise MinFreeSpace(f"Thin Pool has {free} free {kind} blocks which is less than minimum required "
                                   f"{need} free {kind} blocks. Create more free {space} in thin pool or use "
                                   f"dm.min_free_space option to change behavior")

    def _new_device_id(self, dev_id: int) -> None:
        if not 0 <= dev_id <= MAX_DEV_ID:
            raise InvalidRequest(f"invalid thin device id {dev_id}: use 0 to {MAX_DEV_ID}")
        if dev_id in self._devices:
            raise DeviceExists(f"thin device {dev_id} already exists in the pool")

    def create_thin(self, dev_id: int, size: int) -> None:
        """A new empty device of `size` bytes (rounded up to whole blocks); committed."""
        with self._lock:
            self._new_device_id(dev_id)
            if size <= 0:
                raise InvalidRequest(f"invalid thin device size {size}")
            self._check_free_space()
            blocks = -(-size // self.block_size)
            self._devices[dev_id] = Device(dev_id=dev_id, size=blocks * self.block_size, depth=_depth_for(blocks),
                                           transaction=self._sb.transaction_id, creation_time=self._sb.time,
                                           snap_time=self._sb.time)
            self._commit()

    def create_snap(self, dev_id: int, origin_id: int) -> None:
        """A new device sharing every block of `origin_id` as it is now; committed."""
        with self._lock:
            self._new_device_id(dev_id)
            origin = self._device(origin_id)
            self._check_free_space()
            if origin.root:
                self._meta_count[origin.root] += 1
            self._sb.time += 1
            origin.snap_time = self._sb.time
            self._devices[dev_id] = replace(origin, dev_id=dev_id, transaction=self._sb.transaction_id,
                                            creation_time=self._sb.time, snap_time=self._sb.time)
            self._commit()

    def delete(self, dev_id: int) -> None:
        """Remove a device and free the blocks nobody else maps; committed."""
        with self._lock:
            dev = self._device(dev_id)
            if dev.root:
                self._drop_tree(dev.root, dev.depth - 1)
            del self._devices[dev_id]
            self._commit()

    def set_device_size(self, dev_id: int, size: int) -> None:
        """Grow a device (a smaller size is refused: a filesystem may live there)."""
        with self._lock:
            dev = self._device(dev_id)
            blocks = -(-size // self.block_size)
            if blocks * self.block_size < dev.size:
                raise InvalidRequest(f"thin device {dev_id} cannot shrink below {dev.size} bytes")
            while FANOUT ** dev.depth < blocks:
                if dev.root:
                    root = self._new_node()
                    self._nodes[root][0] = dev.root
                    dev.root = root
                dev.depth += 1
            dev.size = blocks * self.block_size
            self._commit()

    def set_transaction_id(self, old: int, new: int) -> None:
        """dm-thin's `set_transaction_id old new` message; committed."""
        with self._lock:
            if old != self._sb.transaction_id:
                raise InvalidRequest(f"transaction id mismatch: pool has {self._sb.transaction_id}, caller expected {old}")
            self._sb.transaction_id = new
            self._commit()

    def import_device(self, dev: Device, mappings: Iterator[tuple[int, int]]) -> None:
        """Add a device with explicit (virtual block, data block) mappings (thin_restore)."""
        with self._lock:
            self._new_device_id(dev.dev_id)
            blocks = -(-dev.size // self.block_size)
            dev = replace(dev, size=blocks * self.block_size, depth=_depth_for(blocks), root=0, mapped=0)
            self._devices[dev.dev_id] = dev
            for vblock, data in mappings:
                if not 0 <= vblock < blocks or not 0 <= data < self._sb.nr_data_blocks:
                    raise BadMetadata(f"mapping {vblock} -> {data} of device {dev.dev_id} is out of range")
                self._ensure_space(data=False)
                leaf, index = self._leaf_for_write(dev, vblock)
                if leaf[index]:
                    raise BadMetadata(f"virtual block {vblock} of device {dev.dev_id} is mapped twice")
                if self._data_ref[data] == 0:
                    self._data_free -= 1
                self._data_inc(data)
                leaf[index] = data + 1
                dev.mapped += 1
            self._commit()

    def set_time(self, value: int) -> None:
        """Set the snapshot clock (restoring a dump)."""
        with self._lock:
            self._sb.time = value
            self._dirty = True

    # ------------------------------------------------------------------- block I/O

    def _range(self, dev: Device, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > dev.size:
            raise OutOfRange(f"I/O at {offset}+{length} is beyond the end of thin device {dev.dev_id} ({dev.size} bytes)")

    def read(self, dev_id: int, offset: int, length: int) -> bytes:
        """Bytes of a device; unmapped blocks read as zeros."""
        buf = bytearray(length)
        self.read_into(dev_id, offset, memoryview(buf))
        return bytes(buf)

    def read_into(self, dev_id: int, offset: int, buf: memoryview) -> None:
        """Fill `buf` with the device's bytes from `offset`; unmapped blocks read as zeros.

        The mapping is resolved under the pool lock and the data read outside it (see
        `_io_outside_lock`), one pread per run of consecutive data blocks, so big reads
        cost one system call and reads of different requests overlap.

        Reads bypass the data file's page cache (O_DIRECT) when `buf` is aligned for
        it: like a dm-thin device, the pool then keeps no second copy of what the
        filesystem on the device already caches, and a cold read costs one copy less.
        The kernel writes dirty cached pages of the range back before a direct read,
        so data written through the cache is never missed.
        """
        with self._lock:
            dev = self._device(dev_id)
            self._range(dev, offset, len(buf))
            runs = self._runs(offset, len(buf), functools.partial(self._locate, dev), [])
            self._io_started()
        try:
            for pos, count, where in runs:
                while where >= 0 and count:
                    got = self._pread(buf[pos:pos + count], where)
                    if not got:
                        break  # beyond the end of the data file: reads as zeros
                    pos, count, where = pos + got, count - got, where + got
                if count:
                    buf[pos:pos + count] = bytes(count)
        finally:
            self._io_finished()

    def _pread(self, buf: memoryview, where: int) -> int:
        return self._data_io(lambda fd: os.preadv(fd, [buf], where))

    def _data_io(self, call: Callable[[int], int]) -> int:
        """`call` on the O_DIRECT descriptor, or on the cached one where O_DIRECT refuses
        (no such descriptor, or EINVAL: memory, offset or length not aligned for it)."""
        if self._direct_fd >= 0:
            try:
                return call(self._direct_fd)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
        return call(self._data_fd)

    def _locate(self, dev: Device, vblock: int, inblock: int, count: int) -> int:
        data = self._lookup(dev, vblock)[0]
        return data * self.block_size + inblock if data >= 0 else -1

    def _runs(self, offset: int, length: int, locate, runs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        """Append to `runs` the (position in the buffer, length, data file offset or -1 for
        zeros) runs covering `length` bytes from `offset`, and return it;
        `locate(vblock, inblock, count)` places each block's part. If `locate` fails,
        `runs` holds the blocks placed before."""
        bs = self.block_size
        pos = 0
        while pos < length:
            vblock, inblock = divmod(offset + pos, bs)
            count = min(bs - inblock, length - pos)
            where = locate(vblock, inblock, count)
            if runs:
                last_pos, last_count, last_where = runs[-1]
                if (where < 0) == (last_where < 0) and (where < 0 or where == last_where + last_count):
                    runs[-1] = (last_pos, last_count + count, last_where)
                    pos += count
                    continue
            runs.append((pos, count, where))
            pos += count
        return runs

    def _io_started(self) -> None:
        """Count a read or write that copies data outside the lock (called under the lock).

        That is safe because what such I/O touches can only change hands under the lock
        after `_io_outside_lock` waited for it: a freed data block is handed to another
        device, or punched, only by a commit; a block becomes shared only by
        `create_snap` or `import_device`, whose commits wait before anyone can read the
        new device; and a commit makes a mapping durable only once its data is written
        (a write mapping blocks writes them before anything can commit or wait: see
        `_ensure_space`).
        """
        with self._io_idle:
            self._io_inflight += 1

    def _io_finished(self) -> None:
        with self._io_idle:
            self._io_inflight -= 1
            if not self._io_inflight:
                self._io_idle.notify_all()

    def _io_outside_lock(self) -> None:
        """Wait until no read or write copies data outside the lock (the caller holds the
        pool lock, so none can start; the ones in flight finish without it)."""
        with self._io_idle:
            while self._io_inflight:
                self._io_idle.wait()

    def write(self, dev_id: int, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Write bytes to a device, copying shared blocks first; returns the count written.

        Blocks are mapped (allocated, copied on write) under the pool lock and the
        bytes written outside it, with O_DIRECT where the filesystem allows it: writes of
        different requests then reach the disk in parallel, and the data file's page
        cache holds no copy of them. A block mapped here but not yet written reads as
        zeros meanwhile (free blocks are punched); where free blocks may still hold
        another device's old data, the bytes are written before the lock is released.
        """
        view = memoryview(data).cast("B")
        with self._lock:
            dev = self._device(dev_id)
            self._range(dev, offset, len(view))
            runs: list[tuple[int, int, int]] = []

            def settle() -> None:
                self._write_runs(view, runs)
                runs.clear()

            try:
                self._runs(offset, len(view), functools.partial(self._map_for_write, dev, settle=settle), runs)
            except BaseException:  # e.g. the pool is full: the blocks mapped so far must not show old data
                settle()
                raise
            if not self._zeroed_free:
                self._write_runs(view, runs)
                return len(view)
            self._io_started()
        try:
            self._write_runs(view, runs)
        finally:
            self._io_finished()
        return len(view)

    def _write_runs(self, view: memoryview, runs: list[tuple[int, int, int]]) -> None:
        if self._direct_fd < 0:
            self._write_chunks(view, runs)
            return
        buffer = self._aligned_buffer(len(view))  # O_DIRECT needs page-aligned memory
        try:
            buffer[:len(view)] = view
            self._write_chunks(buffer[:len(view)], runs)
        finally:
            if len(buffer) == _WRITE_BUFFER:  # bigger ones, for rare big writes, are not kept
                self._buffers.append(buffer)

    def _write_chunks(self, source: memoryview, runs: list[tuple[int, int, int]]) -> None:
        for pos, count, where in runs:
            while count:
                done = self._pwrite(source[pos:pos + count], where)
                pos, count, where = pos + done, count - done, where + done

    def _aligned_buffer(self, size: int) -> memoryview:
        """A page-aligned buffer of at least `size` bytes, reused across calls and threads
        (the FUSE library starts and ends threads, and fresh pages cost a fault each)."""
        try:
            buffer = self._buffers.pop()
        except IndexError:
            buffer = None
        if buffer is None or len(buffer) < size:
            buffer = memoryview(mmap.mmap(-1, max(size, _WRITE_BUFFER)))
        return buffer

    def _pwrite(self, chunk: memoryview, where: int) -> int:
        return self._data_io(lambda fd: os.pwrite(fd, chunk, where))

    def _write_block(self, dev: Device, vblock: int, inblock: int, chunk: memoryview) -> None:
        """Write within one block under the lock (partial discards zero this way)."""
        where = self._map_for_write(dev, vblock, inblock, len(chunk))
        os.pwrite(self._data_fd, chunk, where)

    def _map_for_write(self, dev: Device, vblock: int, inblock: int, count: int,
                       settle: Callable[[], None] | None = None) -> int:
        """The data file offset where `count` bytes at `inblock` of `vblock` go: the block
        itself if the device alone owns it, else a new block, holding a copy of the old
        one (or zeros) wherever the write leaves it. `settle`: see `_ensure_space`."""
        bs = self.block_size
        current, alone = self._lookup(dev, vblock)
        if alone:
            return current * bs + inblock
        self._ensure_space(data=True, settle=settle)
        if self._devices.get(dev.dev_id) is not dev:  # deleted while this write waited for space
            raise DeviceNotFound(f"thin device {dev.dev_id} was deleted during a write to it")
        # Waiting or committing may have changed the block: another write may own it now
        # (and still be writing it outside the lock), or the commit may have unshared it.
        current, alone = self._lookup(dev, vblock)
        if alone:
            return current * bs + inblock
        leaf, index = self._leaf_for_write(dev, vblock)
        self._dirty = True
        current = leaf[index] - 1
        new = self._alloc_data()
        whole = inblock == 0 and count == bs
        try:
            if current >= 0 and not whole:
                self._copy_block(current, new)
            elif current < 0 and not whole and not self._zeroed_free:
                os.pwrite(self._data_fd, bytes(bs), new * bs)
        except BaseException:
            self._data_dec(new)  # never mapped: free again, not leaked
            raise
        if current >= 0:
            self._data_dec(current)
        else:
            dev.mapped += 1
        leaf[index] = new + 1
        return new * bs + inblock

    def _copy_block(self, src: int, dst: int) -> None:
        """Copy a data block in the kernel (a reflink where the filesystem shares extents);
        block devices refuse copy_file_range, so their blocks go through memory."""
        bs = self.block_size
        done = 0
        while done < bs:
            try:
                copied = os.copy_file_range(self._data_fd, self._data_fd, bs - done, src * bs + done, dst * bs + done)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EXDEV, errno.EOPNOTSUPP):
                    raise
                break
            if copied == 0:
                return
            done += copied
        while done < bs:
            chunk = os.pread(self._data_fd, min(bs - done, 1 << 20), src * bs + done)
            if not chunk:
                return
            os.pwrite(self._data_fd, chunk, dst * bs + done)
            done += len(chunk)

    def discard(self, dev_id: int, offset: int, length: int) -> None:
        """Unmap whole blocks in the range (freeing unshared ones); zero partial blocks."""
        with self._lock:
            dev = self._device(dev_id)
            self._range(dev, offset, length)
            bs = self.block_size
            end = offset + length
            first, last = -(-offset // bs), end // bs
            if first >= last:
                self._zero_partial(dev, offset, end)
                return
            self._zero_partial(dev, offset, first * bs)
            self._zero_partial(dev, last * bs, end)
            mapped = [vblock for vblock, _ in self._iter_mapped(dev, first, last)]
            for vblock in mapped:
                self._ensure_space(data=False)
                leaf, index = self._leaf_for_write(dev, vblock)
                self._data_dec(leaf[index] - 1)
                leaf[index] = 0
                dev.mapped -= 1
                self._dirty = True

    def _zero_partial(self, dev: Device, start: int, end: int) -> None:
        bs = self.block_size
        while start < end:
            vblock, inblock = divmod(start, bs)
            count = min(bs - inblock, end - start)
            if self._lookup(dev, vblock)[0] >= 0:
                self._write_block(dev, vblock, inblock, memoryview(bytes(count)))
            start += count

    # ------------------------------------------------------------------ reporting

    def status(self) -> PoolStatus:
        with self._lock:
            sb = self._sb
            return PoolStatus(
                transaction_id=sb.transaction_id,
                data_block_size=self.block_size,
                used_data_blocks=sb.nr_data_blocks - self._data_free - len(self._data_pending),
                total_data_blocks=sb.nr_data_blocks,
                used_meta_blocks=sb.nr_meta_blocks - self._meta_free - len(self._meta_pending),
                total_meta_blocks=sb.nr_meta_blocks,
                devices=len(self._devices),
            )

    def devices(self) -> list[Device]:
        """Copies of the device table entries, by id."""
        with self._lock:
            return [replace(dev) for _, dev in sorted(self._devices.items())]

    def device(self, dev_id: int) -> Device:
        with self._lock:
            return replace(self._device(dev_id))

    def superblock(self) -> Superblock:
        with self._lock:
            return replace(self._sb)

    def mappings(self, dev_id: int) -> list[tuple[int, int]]:
        """(virtual block, data block) pairs of a device, ascending (for thin_dump)."""
        with self._lock:
            return list(self._iter_mapped(self._device(dev_id)))

    def check(self) -> list[str]:
        """Recount every reference from the trees; the list of inconsistencies (empty: clean)."""
        with self._lock:
            problems: list[str] = []
            meta = array("I", bytes(4 * self._sb.nr_meta_blocks))
            data = array("I", bytes(4 * self._sb.nr_data_blocks))
            for slot in range(SUPERBLOCK_SLOTS):
                meta[slot] = 1
            for block in self._devtab_blocks:
                meta[block] += 1
            self._recount_refs(meta)
            for dev in self._devices.values():
                if dev.mapped != sum(1 for _ in self._iter_mapped(dev)):
                    problems.append(f"device {dev.dev_id}: mapped count {dev.mapped} is wrong")
                if not dev.root:
                    continue
                stack = [(dev.root, dev.depth - 1)]
                while stack:
                    block, level = stack.pop()
                    meta[block] += 1
                    if meta[block] > 1:
                        continue
                    for child in self._node(block):
                        if not child:
                            continue
                        if level:
                            stack.append((child, level - 1))
                        elif child - 1 >= len(data):
                            problems.append(f"node {block} maps data block {child - 1} beyond the pool")
                        else:
                            data[child - 1] += 1
            for block, (want, have) in enumerate(zip(meta, self._meta_count)):
                if have != _PENDING and want != have:
                    problems.append(f"metadata block {block}: {want} references, counted {have}")
            for block, (want, have) in enumerate(zip(data, self._data_ref)):
                if have == _PENDING:
                    have = 0
                if want != have:
                    kind = "leaked" if want < have else "owned more often than counted"
                    problems.append(f"data block {block} {kind}: {want} references, counted {have}")
            return problems

    def _recount_refs(self, meta: array) -> None:
        sb = self._sb
        if not sb.ref_root:
            return
        stack = [(sb.ref_root, sb.ref_depth - 1)]
        while stack:
            block, level = stack.pop()
            meta[block] += 1
            for child in self._node(block):
                if child:
                    if level:
                        stack.append((child, level - 1))
                    else:
                        meta[child] += 1

    @contextlib.contextmanager
    def locked(self) -> Iterator[ThinPool]:
        """Hold the pool lock across several calls (e.g. a consistent dump)."""
        with self._lock:
            yield self
