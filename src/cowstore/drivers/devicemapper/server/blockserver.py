"""The pool daemon: serves each active thin device as one file through FUSE.

`losetup --direct-io=on <mountpoint>/<name>` then turns the file into a real block
device; reads and writes reach the pool engine, discards arrive as
`fallocate(PUNCH_HOLE)` / `fallocate(ZERO_RANGE)` and unmap blocks, and FLUSH/FUA
arrive as fsync and commit the metadata.

Run it as its own process, outside the memory cgroup of the processes that write to
the devices: under memory pressure a writer's dirty pages can only be cleaned by this
server, and if the server is charged to the same cgroup its own allocations wait on
that writeback (a deadlock measured on this kernel). A watchdog aborts the FUSE
connection when a request has been stuck longer than `--watchdog` seconds, so the
loop devices fail with EIO instead of hanging forever.

Usage: python3 -m cowstore.thinpool.blockserver --metadata M --data D --mountpoint DIR --socket S
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import logging
import mmap
import os
import pathlib
import stat
import sys
import threading
import time
from typing import Any

import mfusepy

from cowstore.drivers.devicemapper.thinpool import xmldump
from cowstore.drivers.devicemapper.thinpool.errors import DeviceBusy, InvalidRequest, PoolError, PoolExists
from cowstore.drivers.devicemapper.thinpool.pool import ThinPool
from cowstore.errors import MountError
from cowstore.host import fuse, service
from cowstore.host.fsutil import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
from cowstore.host.libc import LIBC
from cowstore.host.mounts import umount

log = logging.getLogger("cowstore.thinpool.blockserver")



def join_cgroup(path: pathlib.Path) -> None:
    """Move this process into memory cgroup `path` (created if needed)."""
    path.mkdir(exist_ok=True)
    (path / "cgroup.procs").write_text(str(os.getpid()))


class Devices:
    """Active devices: file name -> device id, with open counts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_name: dict[str, int] = {}
        self.opens: dict[str, int] = {}


class BlockFS(mfusepy.Operations):
    """A flat directory of device files backed by the pool."""

    use_ns = True

    def __init__(self, pool: ThinPool, devices: Devices, ready: threading.Event, watchdog: Watchdog) -> None:
        self.pool = pool
        self.devices = devices
        self.ready = ready
        self.watchdog = watchdog
        self.started = time.time_ns()

    def init_with_config(self, conn: Any, config: Any) -> None:
        """Ask for 1 MiB requests (libfuse's default is 128 KiB) so big I/O needs fewer round trips."""
        if conn is not None:
            conn.max_write = 1 << 20
        self.ready.set()

    def _dev(self, path: str) -> int:
        with self.devices.lock:
            dev_id = self.devices.by_name.get(path.lstrip("/"))
        if dev_id is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return dev_id

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        times = {"st_atime": self.started, "st_mtime": self.started, "st_ctime": self.started}
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o700, "st_nlink": 2, **times}
        size = self.pool.device(self._dev(path)).size
        return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": size,
                "st_blocks": size // 512, **times}

    def readdir(self, path: str, fh: int) -> list[str]:
        with self.devices.lock:
            return [".", "..", *sorted(self.devices.by_name)]

    def open(self, path: str, flags: int) -> int:
        dev_id = self._dev(path)
        with self.devices.lock:
            name = path.lstrip("/")
            self.devices.opens[name] = self.devices.opens.get(name, 0) + 1
        return dev_id

    def release(self, path: str, fh: int) -> int:
        with self.devices.lock:
            name = path.lstrip("/")
            self.devices.opens[name] = max(self.devices.opens.get(name, 1) - 1, 0)
        return 0

    def _io(self, func, *args):
        with self.watchdog.request():
            try:
                return func(*args)
            except PoolError as exc:
                log.warning("%s failed: %s", func.__name__, exc)
                raise mfusepy.FuseOSError(exc.errno) from None

    def read_buf(self, path: str, bufpp: Any, size: int, offset: int, fh: int) -> int:
        """Answer a read with a page-aligned buffer that the pool fills with O_DIRECT.

        libfuse's plain read hands over a malloc'd buffer, which O_DIRECT refuses (not
        aligned); here the buffer is ours, libfuse sends it and frees it with free().
        """
        size = max(0, min(size, self.pool.device(fh).size - offset))
        reply = ReplyBuffer(size)
        try:
            if size:  # at or past the end: an empty reply, as a file gives
                self._io(self.pool.read_into, fh, offset, reply.view)
        except BaseException:
            reply.free()
            raise
        ctypes.cast(bufpp, ctypes.POINTER(ctypes.c_void_p))[0] = reply.hand_over()
        return 0

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return self._io(self.pool.write, fh, offset, data)

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            self._io(self.pool.discard, fh, offset, size)
            return 0
        if mode & ~FALLOC_FL_KEEP_SIZE:
            raise mfusepy.FuseOSError(errno.EOPNOTSUPP)
        return 0  # plain preallocation: thin devices allocate on write

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self._io(self.pool.flush)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        if length != self.pool.device(self._dev(path)).size:
            raise mfusepy.FuseOSError(errno.EPERM)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        status = self.pool.status()
        blocks = status.data_block_size // 4096
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": status.total_data_blocks * blocks,
                "f_bfree": (status.total_data_blocks - status.used_data_blocks) * blocks,
                "f_bavail": (status.total_data_blocks - status.used_data_blocks) * blocks, "f_namemax": 255}


class _FuseBuf(ctypes.Structure):
    """libfuse 3's `struct fuse_buf`."""

    _fields_ = [("size", ctypes.c_size_t), ("flags", ctypes.c_int), ("mem", ctypes.c_void_p),
                ("fd", ctypes.c_int), ("pos", ctypes.c_int64)]


class _FuseBufvec(ctypes.Structure):
    """libfuse 3's `struct fuse_bufvec` holding one buffer (mfusepy declares `buf` as a pointer)."""

    _fields_ = [("count", ctypes.c_size_t), ("idx", ctypes.c_size_t), ("off", ctypes.c_size_t),
                ("buf", _FuseBuf * 1)]


LIBC.aligned_alloc.restype = ctypes.c_void_p
LIBC.aligned_alloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
LIBC.calloc.restype = ctypes.c_void_p
LIBC.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
LIBC.free.argtypes = [ctypes.c_void_p]
LIBC.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_PAGE = mmap.PAGESIZE


class ReplyBuffer:
    """A read reply in C memory that libfuse will free: page-aligned data in a fuse_bufvec."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.mem = LIBC.aligned_alloc(_PAGE, max(-(-size // _PAGE) * _PAGE, _PAGE))
        if not self.mem:
            raise MemoryError("no memory for a read reply")
        self.view = memoryview((ctypes.c_char * size).from_address(self.mem)).cast("B")

    def hand_over(self) -> int:
        """The fuse_bufvec pointer; libfuse owns both allocations from here on."""
        vec = LIBC.calloc(1, ctypes.sizeof(_FuseBufvec))
        if not vec:
            self.free()
            raise MemoryError("no memory for a read reply")
        bufvec = _FuseBufvec.from_address(vec)
        bufvec.count = 1
        bufvec.buf[0].size = self.size
        bufvec.buf[0].mem = self.mem
        bufvec.buf[0].fd = -1
        return vec

    def free(self) -> None:
        LIBC.free(self.mem)


def keep_freed_memory() -> None:
    """Make glibc reuse freed reply buffers instead of returning them to the kernel.

    By default a 1 MiB buffer is a fresh mmap, or its heap is trimmed once freed, so
    every request touches new pages: the kernel zeroes them and, in a VM, the
    hypervisor faults them in first. Measured here, that made the copies of a cold
    read the largest cost of the server.
    """
    LIBC.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    LIBC.mallopt(_M_TRIM_THRESHOLD, 256 << 20)


class Watchdog:
    """Aborts the FUSE connection when one request runs longer than `timeout` seconds."""

    def __init__(self, mountpoint: str, timeout: float) -> None:
        self.mountpoint = mountpoint
        self.timeout = timeout
        self.lock = threading.Lock()
        self.inflight: dict[int, float] = {}
        self.aborted = False

    def request(self) -> _Inflight:
        return _Inflight(self)

    def run(self) -> None:
        while not self.aborted and self.timeout > 0:
            time.sleep(min(1.0, self.timeout / 4))
            with self.lock:
                oldest = min(self.inflight.values(), default=None)
            if oldest is not None and time.monotonic() - oldest > self.timeout:
                self.abort()

    def abort(self) -> None:
        try:
            conn: int | None = fuse.connection_id(self.mountpoint)
        except MountError:
            conn = None
        log.error("a request has been stuck for over %gs: aborting FUSE connection %s", self.timeout, conn)
        if conn is not None:
            fuse.abort_connection(conn)
        self.aborted = True


class _Inflight:
    def __init__(self, watchdog: Watchdog) -> None:
        self.watchdog = watchdog
        self.key = 0

    def __enter__(self) -> None:
        with self.watchdog.lock:
            self.key = id(self)
            self.watchdog.inflight[self.key] = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        with self.watchdog.lock:
            self.watchdog.inflight.pop(self.key, None)


class Control:
    """The control socket: device management requests from the driver and the CLI."""

    def __init__(self, pool: ThinPool, devices: Devices, ready: threading.Event, mountpoint: str, cgroup: str) -> None:
        self.pool = pool
        self.devices = devices
        self.ready = ready
        self.mountpoint = mountpoint
        self.cgroup = cgroup

    def op_ping(self) -> bool:
        return self.ready.is_set()

    def op_create_thin(self, id: int, size: int) -> None:
        self.pool.create_thin(id, size)

    def op_create_snap(self, id: int, origin: int) -> None:
        self.pool.create_snap(id, origin)

    def op_delete(self, id: int) -> None:
        with self.devices.lock:
            if id in self.devices.by_name.values():
                raise DeviceBusy(f"thin device {id} is active: deactivate it before deleting it")
            self.pool.delete(id)

    def op_set_device_size(self, id: int, size: int) -> None:
        self.pool.set_device_size(id, size)

    def op_set_transaction_id(self, old: int, new: int) -> None:
        self.pool.set_transaction_id(old, new)

    def op_resize_data(self, size: int) -> None:
        self.pool.resize_data(size)

    def op_activate(self, id: int, name: str) -> str:
        self.pool.device(id)
        if "/" in name or name in ("", ".", ".."):
            raise InvalidRequest(f"invalid device name {name!r}")
        with self.devices.lock:
            current = self.devices.by_name.get(name)
            if current is not None and current != id:
                raise DeviceBusy(f"device name {name} is already active for thin device {current}")
            self.devices.by_name[name] = id
        return os.path.join(self.mountpoint, name)

    def op_deactivate(self, name: str) -> None:
        # The kernel sends RELEASE asynchronously after a loop device lets go of the
        # file, so give a just-detached device a moment before calling it busy.
        deadline = time.monotonic() + 10
        while True:
            with self.devices.lock:
                if not self.devices.opens.get(name):
                    self.devices.by_name.pop(name, None)
                    self.devices.opens.pop(name, None)
                    return
            if time.monotonic() > deadline:
                raise DeviceBusy(f"device {name} is still open (attached to a loop device?)")
            time.sleep(0.01)

    def op_list(self) -> list[dict[str, Any]]:
        with self.devices.lock:
            active = {dev_id: name for name, dev_id in self.devices.by_name.items()}
        return [{"id": dev.dev_id, "size": dev.size, "mapped_blocks": dev.mapped, "name": active.get(dev.dev_id)}
                for dev in self.pool.devices()]

    def op_status(self) -> dict[str, Any]:
        status = self.pool.status()
        return {**status.__dict__, "no_space_policy": self.pool.no_space_policy,
                "min_free_pct": self.pool.min_free_pct, "cgroup": self.cgroup, "pid": os.getpid()}

    def op_dump(self) -> str:
        return xmldump.dump(self.pool)

    def op_flush(self) -> None:
        self.pool.flush()

    def op_check(self) -> list[str]:
        return self.pool.check()

    def op_shutdown(self) -> None:
        with self.devices.lock:
            busy = [name for name, count in self.devices.opens.items() if count]
        if busy:
            raise DeviceBusy(f"devices still open: {', '.join(sorted(busy))}")
        self.pool.flush()
        threading.Thread(target=umount, args=(self.mountpoint,), daemon=True).start()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cowstore.thinpool.blockserver", description=__doc__.split("\n")[0])
    parser.add_argument("--metadata", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--mountpoint", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--block-size", type=int, default=65536, help="used when formatting a new pool")
    parser.add_argument("--no-space-policy", choices=("error", "queue"), default="error")
    parser.add_argument("--queue-timeout", type=float, default=60.0)
    parser.add_argument("--min-free-pct", type=int, default=10)
    parser.add_argument("--cgroup", default="", help="memory cgroup directory to run in ('' keeps the current)")
    parser.add_argument("--no-discard-passdown", action="store_true",
                        help="keep freed blocks allocated in the data area (dm.blkdiscard=false)")
    parser.add_argument("--watchdog", type=float, default=120.0, help="seconds before a stuck request aborts the connection")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    keep_freed_memory()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cgroup = ""
    if args.cgroup:
        try:
            join_cgroup(pathlib.Path(args.cgroup))
            cgroup = args.cgroup
        except OSError as exc:
            log.warning("cannot join memory cgroup %s: %s", args.cgroup, exc)
    with contextlib.suppress(PoolExists):
        ThinPool.format(args.metadata, args.data, block_size=args.block_size)
    pool = ThinPool.open(args.metadata, args.data, no_space_policy=args.no_space_policy,
                         queue_timeout=args.queue_timeout, min_free_pct=args.min_free_pct,
                         discard_passdown=not args.no_discard_passdown)
    mountpoint = os.path.abspath(args.mountpoint)
    devices = Devices()
    ready = threading.Event()
    watchdog = Watchdog(mountpoint, args.watchdog)
    control = service.serve_control(Control(pool, devices, ready, mountpoint, cgroup), args.socket)
    threading.Thread(target=watchdog.run, daemon=True).start()
    try:
        mfusepy.FUSE(BlockFS(pool, devices, ready, watchdog), mountpoint, foreground=True, nothreads=False,
                   fsname="cowstore-thinpool", subtype="cowstore-thinpool", default_permissions=True)
    finally:
        pool.close()
        control.remove_socket(args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
