"""The pool daemon's entry point: arguments, memory cgroup, pool, control socket, FUSE.

It runs as its own process, outside the memory cgroup of the processes that write to
the devices: under memory pressure a writer's dirty pages can only be cleaned by this
server, and if the server is charged to the same cgroup its own allocations wait on
that writeback (a deadlock measured on this kernel).

The device files are served by the in-house FUSE stack (`host.fuse`) with several
threads: a loop device with direct I/O keeps several requests in flight (the kernel
sends them in parallel with FUSE_ASYNC_DIO), and each thread spends most of a request
in system calls that release the GIL. SIGTERM and SIGINT abort the connection, as
exiting would anyway (the kernel aborts a connection whose last descriptor closes),
but first, so that the threads end and the pool is closed cleanly.

Usage: python3 -m cowstore.drivers.devicemapper.server.main --metadata M --data D --mountpoint DIR --socket S
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pathlib
import signal
import sys
import threading

from cowstore.drivers.devicemapper.server.control import Control
from cowstore.drivers.devicemapper.server.devicefs import DeviceFS, Devices
from cowstore.drivers.devicemapper.server.watchdog import Watchdog
from cowstore.drivers.devicemapper.thinpool.errors import PoolExists
from cowstore.drivers.devicemapper.thinpool.pool import ThinPool
from cowstore.host import fuse, service

log = logging.getLogger("cowstore.drivers.devicemapper.server")

FSTYPE = "cowstore-thinpool"
# Measured with bench/bench_devicemapper.py: ext4 writeback and readahead keep the
# kernel's default of 12 asynchronous requests in flight most of the time; 32, with 16
# threads to serve them, gave a quarter more sequential write and a third more cold
# read than 12 with 8 threads (medians of 4 runs on a shared 2-core VM).
THREADS = 16
MAX_BACKGROUND = 32


def join_cgroup(path: pathlib.Path) -> None:
    """Move this process into memory cgroup `path` (created if needed)."""
    path.mkdir(exist_ok=True)
    (path / "cgroup.procs").write_text(str(os.getpid()))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cowstore.drivers.devicemapper.server.main", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--metadata", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--mountpoint", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--block-size", type=int, default=65536, help="used when formatting a new pool")
    parser.add_argument("--no-space-policy", choices=("error", "queue"), default="error")
    parser.add_argument("--queue-timeout", type=float, default=60.0)
    parser.add_argument("--min-free-pct", type=int, default=10)
    parser.add_argument("--cgroup", default="", help="memory cgroup directory to run in ('' keeps the current)")
    parser.add_argument(
        "--no-discard-passdown",
        action="store_true",
        help="keep freed blocks allocated in the data area (dm.blkdiscard=false)",
    )
    parser.add_argument(
        "--watchdog", type=float, default=120.0, help="seconds before a stuck request aborts the connection"
    )
    parser.add_argument("--threads", type=int, default=THREADS, help="threads serving FUSE requests")
    parser.add_argument(
        "--read-only", action="store_true", help="serve an existing pool without ever writing its data area"
    )
    return parser.parse_args(argv)


def serve_devices(
    pool: ThinPool, devices: Devices, ready: threading.Event, mountpoint: str, args: argparse.Namespace
) -> None:
    """Mount the device directory and serve it until it is unmounted or aborted."""
    fd = fuse.open_device()
    try:
        fuse.mount_fd(fd, mountpoint, fstype=FSTYPE, source=FSTYPE)
        try:
            watchdog = Watchdog(fuse.connection_id(mountpoint), args.watchdog)
            session = fuse.Session(
                DeviceFS(pool, devices, watchdog),
                fd,
                want_passthrough=False,
                async_dio=True,
                max_background=MAX_BACKGROUND,
            )
            session.handshake()

            def terminate(signum: int, frame: object) -> None:
                log.info("signal %d: aborting FUSE connection %d", signum, watchdog.conn)
                fuse.abort_connection(watchdog.conn)

            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, terminate)
            threading.Thread(target=watchdog.run, daemon=True).start()
            ready.set()
            session.serve(threads=args.threads)
        finally:
            fuse.unmount(mountpoint)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cgroup = ""
    if args.cgroup:
        try:
            join_cgroup(pathlib.Path(args.cgroup))
            cgroup = args.cgroup
        except OSError as exc:
            log.warning("cannot join memory cgroup %s: %s", args.cgroup, exc)
    if not args.read_only:
        with contextlib.suppress(PoolExists):
            ThinPool.format(args.metadata, args.data, block_size=args.block_size)
    pool = ThinPool.open(
        args.metadata,
        args.data,
        no_space_policy=args.no_space_policy,
        queue_timeout=args.queue_timeout,
        min_free_pct=args.min_free_pct,
        discard_passdown=not args.no_discard_passdown,
        read_only=args.read_only,
    )
    mountpoint = os.path.abspath(args.mountpoint)
    devices = Devices()
    ready = threading.Event()
    control = service.serve_control(Control(pool, devices, ready, mountpoint, cgroup), args.socket)
    try:
        serve_devices(pool, devices, ready, mountpoint, args)
    finally:
        pool.close()
        control.remove_socket(args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
