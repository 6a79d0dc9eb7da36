"""Serving one union mount in the current process until it is unmounted."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from cowstore.drivers.aufs.unionfs.branches import parse_branch
from cowstore.drivers.aufs.unionfs.fs import UnionFS
from cowstore.host import fuse

log = logging.getLogger("cowstore.unionfs")


def serve(
    mountpoint: str,
    branches: Sequence[str],
    *,
    timeout: float = 10.0,
    passthrough: bool = True,
    source: str = "unionfs",
    ready_fd: int | None = None,
) -> None:
    """Mount the union at `mountpoint` and answer requests until it is unmounted.

    With `ready_fd`, "<pid> <connection> <passthrough 0|1>" is written there once INIT
    is done (the mount is usable), and the fd is closed.
    """
    os.umask(0)  # modes arrive with the caller's umask already applied by the kernel
    ops = UnionFS([parse_branch(spec) for spec in branches], timeout=timeout)
    fd = fuse.open_device()
    fuse.mount_fd(fd, mountpoint, fstype="unionfs", source=source)
    try:
        session = fuse.Session(ops, fd, want_passthrough=passthrough)
        session.handshake()
        if ready_fd is not None:
            conn = fuse.connection_id(mountpoint)
            os.write(ready_fd, f"{os.getpid()} {conn} {int(session.passthrough)}\n".encode())
            os.close(ready_fd)
        session.serve()
    finally:
        fuse.unmount(mountpoint)
        log.info("stopped serving %s", mountpoint)
