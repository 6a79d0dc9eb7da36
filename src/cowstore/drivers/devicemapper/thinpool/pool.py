"""The thin pool engine: dm-thin's model of block-level copy-on-write, in userspace.

A pool is a data area cut into blocks (64 KiB by default) and a metadata area of
4 KiB blocks. Each thin device maps its virtual blocks to data blocks through a
copy-on-write radix tree (`radix`); a snapshot shares its origin's tree, and a write
that finds a data block with more than one owner copies it first. Reference counts
(`spacemap`) say who owns what; `metadata` loads and commits all of it atomically,
`dataio` moves the bytes, `blockio` turns device reads and writes into mappings and
moves, and `fsck` checks the counts against the trees.

`ThinPool` ties them together behind one lock: the public operations, when they
commit, and what happens when space runs out (`no_space_policy`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

from cowstore.drivers.devicemapper.thinpool import fsck
from cowstore.drivers.devicemapper.thinpool.blockio import BlockIO
from cowstore.drivers.devicemapper.thinpool.dataio import DataArea
from cowstore.drivers.devicemapper.thinpool.errors import (
    BadMetadata,
    InvalidRequest,
    PoolFull,
)
from cowstore.drivers.devicemapper.thinpool.metadata import (
    MIN_BLOCK_SIZE,
    Metadata,
    PoolStatus,
    format_pool,
    read_superblock,
)
from cowstore.drivers.devicemapper.thinpool.ondisk import Device, Superblock


class ThinPool(BlockIO):
    """An open pool. Thread-safe: every public method runs under one lock."""

    def __init__(
        self,
        meta_fd: int,
        data_fd: int,
        sb: Superblock,
        *,
        no_space_policy: str,
        queue_timeout: float,
        min_free_pct: int,
        scrub: bool = True,
        discard_passdown: bool = True,
        read_only: bool = False,
    ) -> None:
        if no_space_policy not in ("error", "queue"):
            raise InvalidRequest(f"invalid no-space policy {no_space_policy!r}: use 'error' or 'queue'")
        if not 0 <= min_free_pct <= 99:
            raise InvalidRequest(f"invalid minimum free space {min_free_pct}%: use 0 to 99")
        self.block_size = sb.data_block_size
        self.read_only = read_only
        self.no_space_policy = no_space_policy
        self.queue_timeout = queue_timeout
        self.min_free_pct = min_free_pct
        self._lock = threading.RLock()
        self._space = threading.Condition(self._lock)  # notified whenever blocks may have become free
        self._closed = False
        self._data = DataArea(data_fd, self.block_size, discard_passdown=discard_passdown, read_only=read_only)
        self._md = Metadata(meta_fd, sb)
        data_blocks = self._data.size() // self.block_size
        if data_blocks < self._md.sb.nr_data_blocks:
            raise BadMetadata(f"data area shrank from {self._md.sb.nr_data_blocks} to {data_blocks} blocks")
        if not read_only:
            self._md.grow_data(data_blocks)
        if self._data.zeroed_free and scrub:
            self._data.scrub(self._md.sb.nr_data_blocks, self._md.data_map.free_between)
        self._data.open_direct()  # last: a failed open closes only the two descriptors it opened

    @property
    def discard_passdown(self) -> bool:
        return self._data.discard_passdown

    @property
    def data_is_file(self) -> bool:
        return self._data.is_file

    @property
    def _data_free(self) -> int:
        """Data blocks free now, not counting those pending until the next commit (tests
        watch it too)."""
        return self._md.data_map.free

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def format(cls, metadata: str | os.PathLike, data: str | os.PathLike, *, block_size: int = MIN_BLOCK_SIZE) -> None:
        """Write an empty pool's superblock; refuses a metadata area that holds a pool."""
        format_pool(metadata, data, block_size)

    @classmethod
    def open(
        cls,
        metadata: str | os.PathLike,
        data: str | os.PathLike,
        *,
        no_space_policy: str = "error",
        queue_timeout: float = 60.0,
        min_free_pct: int = 10,
        scrub: bool = True,
        discard_passdown: bool = True,
        read_only: bool = False,
    ) -> ThinPool:
        """Open a formatted pool at its last commit.

        `read_only` opens the data area read-only: device writes, discards and growing
        the data area are refused (EROFS), and nothing is ever written to it (reading a
        pool that belongs to someone else; the metadata area must still be writable).

        `scrub` punches free blocks that still hold data; restoring a dump onto a data
        area whose blocks are about to be mapped again turns it off. Without
        `discard_passdown` (dm-thin's no_discard_passdown, Docker's dm.blkdiscard=false),
        freed blocks stay allocated in the data area instead of being punched out.
        """
        meta_fd = os.open(metadata, os.O_RDWR | os.O_CLOEXEC)
        try:
            data_fd = os.open(data, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        except BaseException:
            os.close(meta_fd)
            raise
        try:
            sb = read_superblock(meta_fd)
            if sb is None:
                raise BadMetadata(f"{metadata} holds no valid thin pool superblock")
            return cls(
                meta_fd,
                data_fd,
                sb,
                no_space_policy=no_space_policy,
                queue_timeout=queue_timeout,
                min_free_pct=min_free_pct,
                scrub=scrub,
                discard_passdown=discard_passdown,
                read_only=read_only,
            )
        except BaseException:
            os.close(meta_fd)
            os.close(data_fd)
            raise

    def close(self) -> None:
        """Commit and release the files."""
        with self._lock:
            if self._closed:
                return
            self._data.wait_idle()
            try:
                if self._md.dirty:
                    self._commit()
            finally:
                self._close_files()

    def abandon(self) -> None:
        """Close without committing, as a crash would (tests and error paths)."""
        with self._lock:
            if not self._closed:
                self._data.wait_idle()
                self._close_files()

    def _close_files(self) -> None:
        self._closed = True
        self._md.close()
        self._data.close()

    def __enter__(self) -> ThinPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def locked(self) -> Iterator[ThinPool]:
        """Hold the pool lock across several calls (e.g. a consistent dump)."""
        with self._lock:
            yield self

    # ------------------------------------------------------------ commits, space

    def flush(self) -> None:
        """Make every completed write durable and commit the metadata (FLUSH/FUA)."""
        with self._lock:
            if self._md.dirty:
                self._commit()
            else:
                self._data.sync()

    def _commit(self) -> None:
        """Commit the open transaction once the I/O in flight is done (a mapped block must
        hold its data before its mapping is committed), then punch the blocks it freed
        and wake writes waiting for space."""
        self._data.wait_idle()
        freed = self._md.commit(self._data.sync)
        if self._data.zeroed_free and freed:
            self._data.punch(freed)
        self._space.notify_all()

    def _ensure_space(self, data: bool, settle: Callable[[], None] | None = None) -> None:
        """Wait (queue policy) or fail (error policy) until a block can be allocated.

        `settle` runs before this commits or lets the lock go while it waits: a write
        that has mapped blocks but not yet written them writes them there, so no commit
        and no other thread ever sees such a block.
        """
        md = self._md
        deadline = None
        while True:
            if md.needs_commit_for_metadata():
                if settle:
                    settle()
                self._commit()
            if md.metadata_exhausted():
                raise PoolFull("thin pool metadata area is full: grow the metadata file")
            if not data or self._data_free > 0:
                return
            if settle:
                settle()
            if md.data_map.pending:
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
                raise PoolFull(
                    f"thin pool stayed out of data space for {self.queue_timeout:g}s (no_space_policy=queue)"
                )
            self._space.wait(min(0.1, deadline - now))

    def _grow_from_backing(self) -> bool:
        """Take in data blocks the data area gained since the last look."""
        blocks = self._data.size() // self.block_size
        if blocks <= self._md.sb.nr_data_blocks:
            return False
        self._md.grow_data(blocks)
        self._space.notify_all()
        return True

    def resize_data(self, size: int) -> None:
        """Grow the data area to `size` bytes (a file is extended; a device must already be)."""
        self._check_writable("grow the data area")
        with self._lock:
            if size < self._md.sb.nr_data_blocks * self.block_size:
                raise InvalidRequest("the data area cannot shrink")
            self._data.extend(size)
            self._grow_from_backing()
            self._commit()

    # ------------------------------------------------------------ device control

    def create_thin(self, dev_id: int, size: int) -> None:
        """A new empty device of `size` bytes (rounded up to whole blocks); committed."""
        with self._lock:
            self._md.check_new_id(dev_id)
            if size <= 0:
                raise InvalidRequest(f"invalid thin device size {size}")
            self._md.check_min_free(self.min_free_pct)
            self._md.add_thin(dev_id, -(-size // self.block_size))
            self._commit()

    def create_snap(self, dev_id: int, origin_id: int) -> None:
        """A new device sharing every block of `origin_id` as it is now; committed."""
        with self._lock:
            self._md.check_new_id(dev_id)
            origin = self._md.device(origin_id)
            self._md.check_min_free(self.min_free_pct)
            self._md.add_snapshot(dev_id, origin)
            self._commit()

    def delete(self, dev_id: int) -> None:
        """Remove a device and free the blocks nobody else maps; committed."""
        with self._lock:
            self._md.remove(self._md.device(dev_id))
            self._commit()

    def set_device_size(self, dev_id: int, size: int) -> None:
        """Grow a device (a smaller size is refused: a filesystem may live there)."""
        with self._lock:
            dev = self._md.device(dev_id)
            blocks = -(-size // self.block_size)
            if blocks * self.block_size < dev.size:
                raise InvalidRequest(f"thin device {dev_id} cannot shrink below {dev.size} bytes")
            self._md.grow_device(dev, blocks)
            self._commit()

    def set_transaction_id(self, old: int, new: int) -> None:
        """dm-thin's `set_transaction_id old new` message; committed."""
        with self._lock:
            sb = self._md.sb
            if old != sb.transaction_id:
                raise InvalidRequest(f"transaction id mismatch: pool has {sb.transaction_id}, caller expected {old}")
            sb.transaction_id = new
            self._md.dirty = True
            self._commit()

    def import_device(self, dev: Device, mappings: Iterator[tuple[int, int]]) -> None:
        """Add a device with explicit (virtual block, data block) mappings (thin_restore)."""
        with self._lock:
            self._md.check_new_id(dev.dev_id)
            dev = self._md.add_imported(dev)
            for vblock, data in mappings:
                self._ensure_space(data=False)
                self._md.map_imported(dev, vblock, data)
            self._commit()

    def set_time(self, value: int) -> None:
        """Set the snapshot clock (restoring a dump)."""
        with self._lock:
            self._md.sb.time = value
            self._md.dirty = True

    # ------------------------------------------------------------------ reporting

    def status(self) -> PoolStatus:
        with self._lock:
            return self._md.status()

    def devices(self) -> list[Device]:
        """Copies of the device table entries, by id."""
        with self._lock:
            return [replace(dev) for _, dev in sorted(self._md.devices.items())]

    def device(self, dev_id: int) -> Device:
        with self._lock:
            return replace(self._md.device(dev_id))

    def superblock(self) -> Superblock:
        with self._lock:
            return replace(self._md.sb)

    def mappings(self, dev_id: int) -> list[tuple[int, int]]:
        """(virtual block, data block) pairs of a device, ascending (for thin_dump)."""
        with self._lock:
            return list(self._md.mapped(self._md.device(dev_id)))

    def check(self) -> list[str]:
        """Recount every reference from the trees; the list of inconsistencies (empty: clean)."""
        with self._lock:
            return fsck.check(self._md)
