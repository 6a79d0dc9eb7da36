"""The device files: a flat FUSE directory with one file per active thin device.

A direct-I/O loop device (`cowstore.host.loop`) on `<mountpoint>/<name>` turns a file
into a real block device.
Its reads and writes arrive as READ and WRITE requests: a READ goes to the pool with
O_DIRECT straight into the serving thread's page-aligned reply buffer, a WRITE hands
the pool its data where it landed, page-aligned, in the request buffer. Discards arrive as
`fallocate(PUNCH_HOLE)` / `fallocate(ZERO_RANGE)` and unmap blocks; FLUSH/FUA arrive as
fsync and commit the metadata.

Every activation of a name is a new node, so a name activated again for another
device never reaches the old one through a node the kernel still knows; entries are
not cached (a path lookup always asks which device a name is now), attributes for a
second, since the kernel checks them before every read.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator

from cowstore.drivers.devicemapper.server.watchdog import Watchdog
from cowstore.drivers.devicemapper.thinpool.errors import DeviceBusy, InvalidRequest, PoolError
from cowstore.drivers.devicemapper.thinpool.pool import ThinPool
from cowstore.host import fuse
from cowstore.host.fsutil import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
from cowstore.host.fuse import protocol as proto

ROOT = 1
_ATTR_TIMEOUT = 1.0
_BLOCK = 4096

log = logging.getLogger("cowstore.drivers.devicemapper.server")


class Devices:
    """Active devices: file name -> (node id, device id), with open counts per name.

    `lock` also lets the control handler check that a device is inactive and delete
    it without an activation slipping in between.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._by_name: dict[str, tuple[int, int]] = {}
        self._names: dict[int, str] = {}
        self._opens: dict[str, int] = {}
        self._next_node = ROOT + 1

    def activate(self, name: str, dev_id: int) -> None:
        if "/" in name or name in ("", ".", ".."):
            raise InvalidRequest(f"invalid device name {name!r}")
        with self.lock:
            current = self._by_name.get(name)
            if current is not None:
                if current[1] != dev_id:
                    raise DeviceBusy(f"device name {name} is already active for thin device {current[1]}")
                return
            self._by_name[name] = (self._next_node, dev_id)
            self._names[self._next_node] = name
            self._next_node += 1

    def deactivate(self, name: str) -> bool:
        """Drop `name`; False (and nothing done) while it is open."""
        with self.lock:
            if self._opens.get(name):
                return False
            found = self._by_name.pop(name, None)
            if found is not None:
                del self._names[found[0]]
            self._opens.pop(name, None)
            return True

    def is_active(self, dev_id: int) -> bool:
        """Whether a name serves `dev_id` (call with `lock` held)."""
        return any(found[1] == dev_id for found in self._by_name.values())

    def names(self) -> dict[int, str]:
        """Device id -> an active name of it."""
        with self.lock:
            return {dev_id: name for name, (_, dev_id) in self._by_name.items()}

    def busy(self) -> list[str]:
        """The names that are open."""
        with self.lock:
            return sorted(name for name, count in self._opens.items() if count)

    def listing(self) -> list[tuple[str, int]]:
        """(name, node id) of every active device, by name."""
        with self.lock:
            return sorted((name, node) for name, (node, _) in self._by_name.items())

    def lookup(self, name: str) -> tuple[int, int]:
        """(node id, device id) of an active name."""
        with self.lock:
            found = self._by_name.get(name)
        if found is None:
            raise OSError(errno.ENOENT, name)
        return found

    def device(self, node: int) -> int:
        """The device id of a node that is still active."""
        with self.lock:
            name = self._names.get(node)
            if name is None:
                raise OSError(errno.ENOENT, "device deactivated")
            return self._by_name[name][1]

    def open(self, node: int) -> int:
        with self.lock:
            name = self._names.get(node)
            if name is None:
                raise OSError(errno.ENOENT, "device deactivated")
            self._opens[name] = self._opens.get(name, 0) + 1
            return self._by_name[name][1]

    def release(self, node: int) -> None:
        with self.lock:
            name = self._names.get(node)
            if name is not None:
                self._opens[name] = max(self._opens.get(name, 1) - 1, 0)


class DeviceFS(fuse.Operations):
    """The FUSE operations of the device directory; file handles are device ids."""

    def __init__(self, pool: ThinPool, devices: Devices, watchdog: Watchdog) -> None:
        self.pool = pool
        self.devices = devices
        self.watchdog = watchdog
        self.started = time.time_ns()

    def _stat(self, node: int, mode: int, size: int) -> os.stat_result:
        times = {"st_atime_ns": self.started, "st_mtime_ns": self.started, "st_ctime_ns": self.started}
        when = self.started // 1_000_000_000
        return os.stat_result(
            (mode, node, 0, 2 if stat.S_ISDIR(mode) else 1, 0, 0, size, when, when, when),
            {**times, "st_blksize": 0, "st_blocks": size // 512, "st_rdev": 0},
        )

    def _file(self, node: int, dev_id: int) -> os.stat_result:
        with self._pool_call("getattr"):
            size = self.pool.device(dev_id).size
        return self._stat(node, stat.S_IFREG | 0o600, size)

    @contextlib.contextmanager
    def _pool_call(self, what: str) -> Iterator[None]:
        """Pool calls are requests the watchdog times; pool errors become their errno."""
        with self.watchdog.request():
            try:
                yield
            except PoolError as exc:
                log.warning("%s failed: %s", what, exc)
                raise OSError(exc.errno, str(exc)) from None

    def lookup(self, ctx: fuse.Context, parent: int, name: bytes) -> fuse.Entry:
        if parent != ROOT:
            raise OSError(errno.ENOENT, "no such device")
        node, dev_id = self.devices.lookup(os.fsdecode(name))
        return fuse.Entry(node, self._file(node, dev_id), entry_timeout=0.0, attr_timeout=_ATTR_TIMEOUT)

    def getattr(self, ctx: fuse.Context, node: int, fh: int | None) -> tuple[os.stat_result, float]:
        if node == ROOT:
            return self._stat(ROOT, stat.S_IFDIR | 0o700, 0), _ATTR_TIMEOUT
        return self._file(node, self.devices.device(node)), _ATTR_TIMEOUT

    def setattr(self, ctx: fuse.Context, node: int, change: fuse.SetAttr) -> tuple[os.stat_result, float]:
        """Times are ignored; a device's size and owner change only through the pool."""
        if node == ROOT or change.mode is not None or change.uid is not None or change.gid is not None:
            raise OSError(errno.EPERM, "device files keep their mode and owner")
        attr = self._file(node, self.devices.device(node))
        if change.size is not None and change.size != attr.st_size:
            raise OSError(errno.EPERM, "resize a thin device through the pool")
        return attr, _ATTR_TIMEOUT

    def open(self, ctx: fuse.Context, node: int, flags: int) -> fuse.Opened:
        return fuse.Opened(self.devices.open(node))

    def release(self, ctx: fuse.Context, node: int, fh: int) -> None:
        self.devices.release(node)

    def read_into(self, ctx: fuse.Context, node: int, fh: int, offset: int, buf: memoryview) -> int:
        """Read into the reply buffer, cut at the device's end (empty at or past it, as a file)."""
        with self._pool_call("read"):
            size = max(0, min(len(buf), self.pool.device(fh).size - offset))
            if size:
                self.pool.read_into(fh, offset, buf[:size])
        return size

    def write(self, ctx: fuse.Context, node: int, fh: int, offset: int, data: memoryview) -> int:
        with self._pool_call("write"):
            return self.pool.write(fh, offset, data)

    def fallocate(self, ctx: fuse.Context, node: int, fh: int, offset: int, length: int, mode: int) -> None:
        """Punching a hole or zeroing unmaps; plain preallocation is a no-op (thin devices allocate on write)."""
        if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            with self._pool_call("discard"):
                self.pool.discard(fh, offset, length)
        elif mode & ~FALLOC_FL_KEEP_SIZE:
            raise OSError(errno.EOPNOTSUPP, "fallocate mode")

    def fsync(self, ctx: fuse.Context, node: int, fh: int, datasync: bool) -> None:
        with self._pool_call("flush"):
            self.pool.flush()

    def statfs(self, ctx: fuse.Context, node: int) -> os.statvfs_result:
        status = self.pool.status()
        blocks = status.data_block_size // _BLOCK
        free = (status.total_data_blocks - status.used_data_blocks) * blocks
        return os.statvfs_result((_BLOCK, _BLOCK, status.total_data_blocks * blocks, free, free, 0, 0, 0, 0, 255))

    def readdir(self, ctx: fuse.Context, node: int, fh: int, offset: int) -> Iterator[tuple[bytes, int, int, int]]:
        entries = [(".", ROOT, stat.S_IFDIR), ("..", ROOT, stat.S_IFDIR)]
        entries += [(name, dev_node, stat.S_IFREG) for name, dev_node in self.devices.listing()]
        for index in range(offset, len(entries)):
            name, ino, mode = entries[index]
            yield os.fsencode(name), ino, proto.dirent_type(mode), index + 1
