"""Reads, writes and discards of thin devices: from device offsets to data blocks.

A mixin of `ThinPool`: mappings are resolved and changed under the pool lock (with
copy-on-write of shared blocks and the no-space policy of `_ensure_space`), and the
bytes move outside it through the data area, so requests of different threads reach
the disk in parallel.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

from cowstore.drivers.devicemapper.thinpool.dataio import DataArea, Run, plan_runs
from cowstore.drivers.devicemapper.thinpool.errors import DeviceNotFound, OutOfRange, ReadOnlyPool
from cowstore.drivers.devicemapper.thinpool.metadata import Metadata
from cowstore.drivers.devicemapper.thinpool.ondisk import Device


class BlockIO:
    """Device I/O over the pool's metadata (`_md`) and data area (`_data`), under `_lock`."""

    block_size: int
    read_only: bool
    _lock: threading.RLock
    _md: Metadata
    _data: DataArea

    def _ensure_space(self, data: bool, settle: Callable[[], None] | None = None) -> None:
        """Wait or fail until a block can be allocated: the pool's no-space policy."""
        raise NotImplementedError

    def _range(self, dev: Device, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > dev.size:
            raise OutOfRange(
                f"I/O at {offset}+{length} is beyond the end of thin device {dev.dev_id} ({dev.size} bytes)"
            )

    def _check_writable(self, what: str) -> None:
        if self.read_only:
            raise ReadOnlyPool(f"cannot {what}: the pool is open read-only")

    def read(self, dev_id: int, offset: int, length: int) -> bytes:
        """Bytes of a device; unmapped blocks read as zeros."""
        buf = bytearray(length)
        self.read_into(dev_id, offset, memoryview(buf))
        return bytes(buf)

    def read_into(self, dev_id: int, offset: int, buf: memoryview) -> None:
        """Fill `buf` with the device's bytes from `offset`; unmapped blocks read as zeros.

        The mapping is resolved under the pool lock and the data read outside it (see
        `DataArea.begin_io`), one pread per run of consecutive data blocks, so big reads
        cost one system call and reads of different requests overlap.

        Reads bypass the data file's page cache (O_DIRECT) when `buf` is aligned for
        it: like a dm-thin device, the pool then keeps no second copy of what the
        filesystem on the device already caches, and a cold read costs one copy less.
        The kernel writes dirty cached pages of the range back before a direct read,
        so data written through the cache is never missed.
        """
        with self._lock:
            dev = self._md.device(dev_id)
            self._range(dev, offset, len(buf))
            runs = plan_runs(offset, len(buf), self.block_size, functools.partial(self._locate, dev), [])
            self._data.begin_io()
        try:
            self._data.read_runs(buf, runs)
        finally:
            self._data.end_io()

    def _locate(self, dev: Device, vblock: int, inblock: int, count: int) -> int:
        data = self._md.data_block(dev, vblock)
        return data * self.block_size + inblock if data >= 0 else -1

    def write(self, dev_id: int, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Write bytes to a device, copying shared blocks first; returns the count written.

        Blocks are mapped (allocated, copied on write) under the pool lock and the
        bytes written outside it, with O_DIRECT where the filesystem allows it: writes of
        different requests then reach the disk in parallel, and the data file's page
        cache holds no copy of them. A block mapped here but not yet written reads as
        zeros meanwhile (free blocks are punched); where free blocks may still hold
        another device's old data, the bytes are written before the lock is released.
        """
        self._check_writable("write")
        view = memoryview(data).cast("B")
        with self._lock:
            dev = self._md.device(dev_id)
            self._range(dev, offset, len(view))
            runs: list[Run] = []

            def settle() -> None:
                self._write_runs(view, runs)
                runs.clear()

            try:
                plan_runs(
                    offset, len(view), self.block_size, functools.partial(self._map_for_write, dev, settle=settle), runs
                )
            except BaseException:  # e.g. the pool is full: the blocks mapped so far must not show old data
                settle()
                raise
            if not self._data.zeroed_free:
                self._write_runs(view, runs)
                return len(view)
            self._data.begin_io()
        try:
            self._write_runs(view, runs)
        finally:
            self._data.end_io()
        return len(view)

    def _write_runs(self, view: memoryview, runs: list[Run]) -> None:
        self._data.write_runs(view, runs, self._pwrite)

    def _pwrite(self, chunk: memoryview, where: int) -> int:
        return self._data.pwrite(chunk, where)

    def _copy_block(self, src: int, dst: int) -> None:
        self._data.copy_block(src, dst)

    def _map_for_write(
        self, dev: Device, vblock: int, inblock: int, count: int, settle: Callable[[], None] | None = None
    ) -> int:
        """The data area offset where `count` bytes at `inblock` of `vblock` go: the block
        itself if the device alone owns it, else a new block, holding a copy of the old
        one (or zeros) wherever the write leaves it. `settle`: see `_ensure_space`."""
        bs = self.block_size
        current, alone = self._md.lookup(dev, vblock)
        if alone:
            return current * bs + inblock
        self._ensure_space(data=True, settle=settle)
        if self._md.devices.get(dev.dev_id) is not dev:  # deleted while this write waited for space
            raise DeviceNotFound(f"thin device {dev.dev_id} was deleted during a write to it")
        # Waiting or committing may have changed the block: another write may own it now
        # (and still be writing it outside the lock), or the commit may have unshared it.
        current, alone = self._md.lookup(dev, vblock)
        if alone:
            return current * bs + inblock
        whole = inblock == 0 and count == bs

        def fill(old: int, new: int) -> None:
            if whole:
                return
            if old >= 0:
                self._copy_block(old, new)
            elif not self._data.zeroed_free:
                self._data.write_cached(bytes(bs), new * bs)

        return self._md.remap(dev, vblock, fill) * bs + inblock

    def discard(self, dev_id: int, offset: int, length: int) -> None:
        """Unmap whole blocks in the range (freeing unshared ones); zero partial blocks."""
        self._check_writable("discard")
        with self._lock:
            dev = self._md.device(dev_id)
            self._range(dev, offset, length)
            bs = self.block_size
            end = offset + length
            first, last = -(-offset // bs), end // bs
            if first >= last:
                self._zero_partial(dev, offset, end)
                return
            self._zero_partial(dev, offset, first * bs)
            self._zero_partial(dev, last * bs, end)
            for vblock in [vblock for vblock, _ in self._md.mapped(dev, first, last)]:
                self._ensure_space(data=False)
                self._md.unmap(dev, vblock)

    def _zero_partial(self, dev: Device, start: int, end: int) -> None:
        """Zero the mapped blocks' part of [start, end) (partial blocks of a discard), under the lock."""
        bs = self.block_size
        while start < end:
            vblock, inblock = divmod(start, bs)
            count = min(bs - inblock, end - start)
            if self._md.data_block(dev, vblock) >= 0:
                where = self._map_for_write(dev, vblock, inblock, count)
                self._data.write_cached(bytes(count), where)
            start += count
