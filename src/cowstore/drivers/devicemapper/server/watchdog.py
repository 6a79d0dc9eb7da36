"""The watchdog: aborts the FUSE connection when one request is stuck for too long.

A request stuck in the pool (waiting for space that never comes, a data file that no
longer answers) would otherwise hang the loop device, the filesystem on it and every
process that touches it, for good. Aborted, the connection fails every pending and
future request with EIO, the server's threads read ENODEV and it exits.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

from cowstore.host import fuse

log = logging.getLogger("cowstore.drivers.devicemapper.server")


class Watchdog:
    """Times the requests in flight; `run` aborts connection `conn` once one is older than `timeout` s."""

    def __init__(self, conn: int, timeout: float) -> None:
        self.conn = conn
        self.timeout = timeout
        self.lock = threading.Lock()
        self.inflight: dict[int, float] = {}
        self.aborted = False

    def request(self) -> Inflight:
        """A context manager for the duration of one request."""
        return Inflight(self)

    def run(self) -> None:
        """Check the requests in flight until the connection is aborted (0 s: never check)."""
        while not self.aborted and self.timeout > 0:
            time.sleep(min(1.0, self.timeout / 4))
            with self.lock:
                oldest = min(self.inflight.values(), default=None)
            if oldest is not None and time.monotonic() - oldest > self.timeout:
                self.abort()

    def abort(self) -> None:
        log.error("a request has been stuck for over %gs: aborting FUSE connection %d", self.timeout, self.conn)
        fuse.abort_connection(self.conn)
        self.aborted = True


class Inflight:
    """One request in flight, keyed by the object's id while it is registered."""

    def __init__(self, watchdog: Watchdog) -> None:
        self.watchdog = watchdog

    def __enter__(self) -> None:
        with self.watchdog.lock:
            self.watchdog.inflight[id(self)] = time.monotonic()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        with self.watchdog.lock:
            self.watchdog.inflight.pop(id(self), None)
