"""The control channel to a running block server: one JSON object per line each way.

The server owns the open pool (the engine keeps its allocation state in memory), so
every other process, the driver included, changes devices through this socket, the
way Docker sends `create_thin`/`create_snap`/`delete` messages to the dm-thin target.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from cowstore.thinpool import errors

ERROR_CLASSES: dict[str, type[errors.PoolError]] = {
    cls.__name__: cls
    for cls in (errors.PoolError, errors.PoolFull, errors.MinFreeSpace, errors.DeviceExists,
                errors.DeviceNotFound, errors.BadMetadata, errors.OutOfRange)
}


class ServerUnavailable(errors.PoolError):
    """No block server answers on the control socket."""


class PoolClient:
    """Calls into the block server that serves one pool."""

    def __init__(self, socket_path: str | os.PathLike, timeout: float = 120.0) -> None:
        self.socket_path = os.fspath(socket_path)
        self.timeout = timeout

    def call(self, op: str, **args: Any) -> Any:
        """Run `op` in the server; re-raises the server's pool errors as the same classes."""
        request = json.dumps({"op": op, **args}).encode() + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.socket_path)
                sock.sendall(request)
                with sock.makefile("rb") as stream:
                    line = stream.readline()
        except OSError as exc:
            raise ServerUnavailable(f"thin pool server at {self.socket_path} is not reachable: {exc.strerror or exc}") from None
        if not line:
            raise ServerUnavailable(f"thin pool server at {self.socket_path} closed the connection during {op!r}")
        reply = json.loads(line)
        if "error" in reply:
            cls = ERROR_CLASSES.get(reply.get("kind", ""), errors.PoolError)
            raise cls(reply["error"])
        return reply.get("result")

    def alive(self) -> bool:
        """Whether a server answers and has its FUSE mount up."""
        try:
            return bool(self.call("ping"))
        except ServerUnavailable:
            return False
