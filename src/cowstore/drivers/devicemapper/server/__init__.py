"""The pool's block server: one process per driver home owns the open pool.

It serves each active thin device as a file through FUSE (`devicefs`), which a loop
device turns into a real block device, and takes device requests (create, snapshot,
delete, activate) on its control socket (`control`), the way Docker sends messages to
the dm-thin target; `watchdog` aborts the FUSE connection when a request is stuck,
and `main` starts it all. It runs in its own session, so it outlives the command
that started it (like a dm table outlives dmsetup), and by default in its own memory
cgroup, so that writers under memory pressure cannot deadlock it.
"""

from __future__ import annotations

import fcntl
import os
import pathlib

from cowstore.drivers.devicemapper.thinpool.errors import ERROR_CLASSES
from cowstore.host import service
from cowstore.host.mounts import is_mountpoint, umount
from cowstore.host.service import ServiceClient

MODULE = "cowstore.drivers.devicemapper.server.main"
DEFAULT_CGROUP = "/sys/fs/cgroup/memory/cowstore-thinpool"


def client(socket: pathlib.Path) -> ServiceClient:
    """A client of the server on `socket`; pool errors come back as their own classes."""
    return ServiceClient(socket, error_classes=ERROR_CLASSES)


def start_server(
    *,
    metadata: pathlib.Path,
    data: pathlib.Path,
    mountpoint: pathlib.Path,
    socket: pathlib.Path,
    log: pathlib.Path,
    block_size: int = 65536,
    no_space_policy: str = "error",
    queue_timeout: float = 60.0,
    min_free_pct: int = 10,
    cgroup: str = DEFAULT_CGROUP,
    discard_passdown: bool = True,
    read_only: bool = False,
    watchdog: float = 120.0,
    timeout: float = 20.0,
) -> ServiceClient:
    """Start a block server (unless one already answers on `socket`) and wait until it serves.

    With `read_only`, the pool in `metadata` must exist, and its data area is never written.

    Under a lock file beside the socket: processes that all find the server dead (it
    was killed) start one new server between them, not one each.
    """
    pool = client(socket)
    if pool.alive():
        return pool
    args = [
        "--metadata",
        str(metadata),
        "--data",
        str(data),
        "--mountpoint",
        str(mountpoint),
        "--socket",
        str(socket),
        "--block-size",
        str(block_size),
        "--no-space-policy",
        no_space_policy,
        "--queue-timeout",
        str(queue_timeout),
        "--min-free-pct",
        str(min_free_pct),
        "--cgroup",
        cgroup,
        "--watchdog",
        str(watchdog),
    ]
    if not discard_passdown:
        args.append("--no-discard-passdown")
    if read_only:
        args.append("--read-only")
    lock = os.open(socket.with_name("server.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if pool.alive():
            return pool
        if is_mountpoint(mountpoint):
            umount(mountpoint)  # left by a server that died
        mountpoint.mkdir(mode=0o700, parents=True, exist_ok=True)
        return service.start(MODULE, args, client=pool, log=log, timeout=timeout)
    finally:
        os.close(lock)


def stop_server(pool: ServiceClient, mountpoint: pathlib.Path, timeout: float = 20.0) -> None:
    """Ask the server to commit and exit; waits until it is gone (clears a dead server's mount)."""
    if not service.stop(pool, timeout) and is_mountpoint(mountpoint):
        umount(mountpoint)
