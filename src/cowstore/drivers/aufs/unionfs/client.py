"""The driver's side of the union server: start it on demand, mount, unmount, stop.

The server is started by the first mount that finds none answering (under a lock
file, so two commands never start two servers on one socket) and lives until the
driver's cleanup stops it. A server that died leaves its mounts in the mount table
answering ENOTCONN; `unmount` recognises such a mount (nobody serves it), aborts its
connection and detaches it, so the next mount starts afresh with a new server.
"""

from __future__ import annotations

import fcntl
import os
import pathlib
from collections.abc import Sequence
from typing import Any

from cowstore.drivers.aufs.unionfs.branches import BranchError
from cowstore.errors import MountError
from cowstore.host import fuse, mounts, service
from cowstore.host.service import ServiceClient, ServiceUnavailable

MODULE = "cowstore.drivers.aufs.unionfs.server"
FSTYPE = "fuse.unionfs"
_ERRORS = {cls.__name__: cls for cls in (MountError, BranchError)}


def _target(mountpoint: str | os.PathLike) -> str:
    """The mount point as the mount table spells it, resolved without entering it (a
    mount of a dead server would answer ENOTCONN, a hung one would never answer)."""
    path = os.path.abspath(mountpoint)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


class UnionClient:
    """The union server of one driver home, with its files in `directory`."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.socket = directory / "control.sock"
        self.log = directory / "server.log"
        self._lock_file = directory / "server.lock"
        self.client = ServiceClient(self.socket, error_classes=_ERRORS, timeout=60.0)

    def _start(self) -> None:
        """Start the server unless one answers (the lock file keeps it to one server)."""
        fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            service.start(MODULE, ["--socket", str(self.socket)], client=self.client, log=self.log)
        finally:
            os.close(fd)

    def mount(
        self, mountpoint: str | os.PathLike, branches: Sequence[str], *, timeout: float, passthrough: bool, source: str
    ) -> dict[str, Any]:
        """Mount `branches` (top first, `DIR=MODE`) at `mountpoint`; returns the server's
        description of the mount ({pid, conn, passthrough}).

        The request goes straight to the server; only when none answers is one started
        (a separate ping first would cost every mount a round trip).
        """
        args = {
            "mountpoint": _target(mountpoint),
            "branches": list(branches),
            "timeout": timeout,
            "passthrough": passthrough,
            "source": source,
        }
        try:
            reply: dict[str, Any] = self.client.call("mount", **args)
        except ServiceUnavailable:
            self._start()
            reply = self.client.call("mount", **args)
        return reply

    def info(self, mountpoint: str | os.PathLike) -> dict[str, Any] | None:
        """The live server's description of the mount at `mountpoint`; None if none serves it."""
        try:
            reply: dict[str, Any] | None = self.client.call("mounted", mountpoint=_target(mountpoint))
        except ServiceUnavailable:
            return None
        return reply

    def unmount(self, mountpoint: str | os.PathLike) -> None:
        """Unmount `mountpoint`, also when the server that mounted it is gone."""
        path = _target(mountpoint)
        if mounts.find_mount(path) is None:
            return
        try:
            if self.client.call("unmount", mountpoint=path):
                return
        except ServiceUnavailable:
            pass
        _clear_orphan(path)

    def stop(self) -> None:
        """Unmount everything the server serves and wait until it has exited."""
        service.stop(self.client)


def _clear_orphan(mountpoint: str) -> None:
    """Detach a union mount that no server answers (its requests fail with ENOTCONN)."""
    found = mounts.find_mount(mountpoint)
    if found is None or found.fstype != FSTYPE:
        return
    fuse.abort_connection(found.minor)
    fuse.unmount(mountpoint)
