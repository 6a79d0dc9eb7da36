"""The snapshotter process: a gRPC server on a Unix socket, until SIGTERM or SIGINT.

containerd dials the socket named in its config (`[proxy_plugins.<name>] address`).
The socket is mode 0600 (containerd runs as root), and a second server on the same
address is refused while the first still answers. On a signal the server stops taking
calls, lets running ones finish, removes its socket and returns; the caller then
closes the store without unmounting anything: containers running on its snapshots
keep their union mounts and loop devices, and the next server takes them over.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import threading
from collections.abc import Callable
from concurrent import futures

import grpc

from cowstore.errors import Unavailable
from cowstore.layers import LayerStore
from cowstore.snapshotter.service import SnapshotService

DEFAULT_ADDRESS = pathlib.Path("/run/cowstore/snapshotter.sock")
_GRACE = 10.0  # seconds running calls get to finish on shutdown


def _claim(path: pathlib.Path) -> None:
    """Make room for the socket; Unavailable if a live server answers on it."""
    path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    if not path.exists() and not path.is_symlink():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # left by a server that died
            return
    raise Unavailable(f"a snapshotter already serves on {path}")


def serve(
    layers: LayerStore,
    address: str | os.PathLike = DEFAULT_ADDRESS,
    *,
    ready: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve containerd's snapshots API for `layers` on `address` until a signal (or `stop`)."""
    path = pathlib.Path(address).absolute()
    _claim(path)
    stop = stop or threading.Event()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="snapshots"))
    server.add_generic_rpc_handlers([SnapshotService(layers).handler()])
    # Catch the signals before the socket answers: whoever sees it answer may stop us at once.
    previous = {}
    if threading.current_thread() is threading.main_thread():  # only it may catch signals
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        old_umask = os.umask(0o177)
        try:
            if server.add_insecure_port(f"unix://{path}") == 0:
                raise Unavailable(f"cannot listen on {path}")
            server.start()
        finally:
            os.umask(old_umask)
        if ready is not None:
            ready()
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop(_GRACE).wait()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
