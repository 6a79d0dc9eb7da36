"""`cowstore system reset`: give back everything a store holds and remove its root.

Like `podman system reset`: the store is opened and shut down the normal way when it
can be (containers unmounted, the driver's servers stopped, its loop devices
detached). A store that no longer opens (a corrupt database, a driver that cannot
start) is taken apart from the outside: its helper servers are found by their
arguments and terminated, what is mounted below the root is detached, loop devices
on files below it are detached, and the root is removed. A root that is itself a
mount point (a dedicated filesystem) stays mounted, emptied.
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field

from cowstore.drivers import driver_names
from cowstore.errors import CowstoreError, InvalidArgument
from cowstore.host import fsutil, loop, mounts, service
from cowstore.metadata.db import DATABASE_FILE
from cowstore.store import Store


@dataclass
class ResetReport:
    root: pathlib.Path
    shutdown_error: str | None = None  # why the store could not be shut down normally
    servers: list[int] = field(default_factory=list)  # terminated from the outside
    mounts: list[str] = field(default_factory=list)  # detached from the outside
    loops: list[str] = field(default_factory=list)  # detached from the outside


def is_store_root(root: pathlib.Path) -> bool:
    """Whether `root` looks like a store: its database, its lock, or a driver's directory."""
    if (root / DATABASE_FILE).exists() or (root / "store.lock").exists():
        return True
    return any((root / name).is_dir() for name in driver_names())


def reset(
    root: str | os.PathLike, driver: str | None = None, storage_opts: Mapping[str, str] | None = None
) -> ResetReport:
    """Release every mount, server and loop device of the store at `root`, then remove it."""
    path = pathlib.Path(root)
    report = ResetReport(path)
    if not path.exists():
        return report
    if os.path.realpath(path) == "/" or not is_store_root(path):
        raise InvalidArgument(f"{path} is not a cowstore root (no {DATABASE_FILE}, no driver directory): not removed")
    try:
        Store(path, driver, storage_opts).shutdown()
    except (CowstoreError, OSError, sqlite3.Error) as exc:
        report.shutdown_error = str(exc) or type(exc).__name__
    for pid in service.servers_below(path):
        service.terminate(pid)
        report.servers.append(pid)
    top = os.path.realpath(path)
    for point in mounts.mounts_under(path):
        if point != top:
            mounts.umount(point, mounts.MNT_DETACH)
            report.mounts.append(point)
    for device in loop.attached_below(path):
        loop.detach_device(device)
        report.loops.append(device)
    if mounts.is_mountpoint(path):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fsutil.empty_dir(fd)
        finally:
            os.close(fd)
    else:
        fsutil.remove_tree(path)
    return report
