"""The union server: one process per aufs driver home serves every union mount of it.

`python -m cowstore.drivers.aufs.unionfs.server --socket PATH` is started through
`cowstore.host.service` (in its own session, so it outlives the command that started
it) and takes control requests, one JSON object a line, on PATH:

- `mount` {mountpoint, branches, timeout, passthrough, source}: open a FUSE connection,
  mount it, answer INIT, and serve it with a `host.fuse.Session` in a thread of its
  own; returns {pid, conn, passthrough};
- `mounted` {mountpoint}: the same description, or null when nothing is served there;
- `unmount` {mountpoint}: unmount one (false when it was not served here);
- `shutdown`: unmount everything and exit; `ping` and `pid` as every service has.

A mount costs an open, a mount(2) and the INIT round trip, no process start. Each
mount keeps its own `UnionFS` state and request thread, so mounts never share locks;
they only take turns on the interpreter, which passthrough keeps off the data path.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from cowstore.drivers.aufs.unionfs.branches import parse_branch
from cowstore.drivers.aufs.unionfs.fs import UnionFS
from cowstore.errors import InvalidArgument, MountError, Unavailable
from cowstore.host import fuse, mounts, service

log = logging.getLogger("cowstore.unionfs")

# How long an unmount waits for an idle mount's request thread to see the end of its
# connection before it aborts the connection instead.
_END_WAIT = 5.0


@dataclass
class Served:
    """One union mount and the thread answering its FUSE connection."""

    mountpoint: str
    fd: int
    session: fuse.Session
    conn: int
    thread: threading.Thread = field(init=False)

    def describe(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "conn": self.conn, "passthrough": self.session.passthrough}


class UnionServer:
    """The control operations (`op_*`) and the mounts they manage."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.mounts: dict[str, Served] = {}
        self.stopping = threading.Event()  # no new mounts from now on
        self.stopped = threading.Event()  # every mount is gone: the process may exit
        self._shutdown_by: threading.Thread | None = None

    def op_ping(self) -> bool:
        return not self.stopping.is_set()

    def op_mount(
        self,
        mountpoint: str,
        branches: list[str],
        timeout: float = 10.0,
        passthrough: bool = True,
        source: str = "unionfs",
    ) -> dict[str, Any]:
        if not os.path.isabs(mountpoint):
            raise InvalidArgument(f"mount point {mountpoint!r} is not an absolute path")
        ops = UnionFS([parse_branch(spec) for spec in branches], timeout=timeout)
        with self.lock:
            if self.stopping.is_set():
                raise Unavailable("the union server is shutting down")
            if mountpoint in self.mounts or mounts.find_mount(mountpoint) is not None:
                raise MountError(f"union mount on {mountpoint}: something is mounted there already")
            served = self._attach(mountpoint, ops, passthrough, source)
            self.mounts[mountpoint] = served
        log.info("serving %s (connection %d, passthrough %s)", mountpoint, served.conn, served.session.passthrough)
        return served.describe()

    def op_mounted(self, mountpoint: str) -> dict[str, Any] | None:
        with self.lock:
            served = self.mounts.get(mountpoint)
        return served.describe() if served is not None else None

    def op_unmount(self, mountpoint: str) -> bool:
        with self.lock:
            served = self.mounts.pop(mountpoint, None)
        if served is None:
            return False
        self._detach(served)
        return True

    def op_shutdown(self) -> int:
        """Unmount everything; the process exits once this reply is out."""
        self.stopping.set()
        count = self.unmount_all()
        self._shutdown_by = threading.current_thread()  # the control thread sending the reply
        self.stopped.set()
        return count

    def unmount_all(self) -> int:
        with self.lock:
            served = list(self.mounts.values())
            self.mounts.clear()
        for one in served:
            self._detach(one)
        return len(served)

    def wait_for_reply(self) -> None:
        """Let the control thread that asked for the shutdown send its answer."""
        if self._shutdown_by is not None:
            self._shutdown_by.join(_END_WAIT)

    def _attach(self, mountpoint: str, ops: UnionFS, passthrough: bool, source: str) -> Served:
        """Mount a new connection at `mountpoint`, answer INIT, and start its request thread.

        OSErrors become MountError: only cowstore errors cross the control socket.
        """
        try:
            fd = fuse.open_device()
            try:
                fuse.mount_fd(fd, mountpoint, fstype="unionfs", source=source)
                try:
                    session = fuse.Session(ops, fd, want_passthrough=passthrough)
                    session.handshake()
                    served = Served(mountpoint, fd, session, fuse.connection_id(mountpoint))
                except BaseException:
                    fuse.unmount(mountpoint)
                    raise
            except BaseException:
                os.close(fd)
                raise
        except OSError as exc:
            raise MountError(f"union mount on {mountpoint}: {exc.strerror or exc}") from None
        served.thread = threading.Thread(target=self._serve, args=(served,), name=f"union {mountpoint}", daemon=True)
        served.thread.start()
        return served

    def _serve(self, served: Served) -> None:
        """Answer one connection until it ends (unmounted, or aborted)."""
        try:
            served.session.serve()
        except Exception:
            log.exception("serving %s failed", served.mountpoint)
        finally:
            with self.lock:
                if self.mounts.get(served.mountpoint) is served:
                    del self.mounts[served.mountpoint]
            os.close(served.fd)
            log.info("stopped serving %s", served.mountpoint)

    @staticmethod
    def _detach(served: Served) -> None:
        """Unmount; a mount still in use is detached lazily and served until its last user goes."""
        try:
            mounts.umount(served.mountpoint, 0)
        except MountError:
            fuse.unmount(served.mountpoint)
            log.info("%s is busy: detached, served until its last user leaves", served.mountpoint)
            return
        served.thread.join(_END_WAIT)
        if served.thread.is_alive():
            log.warning("%s: connection %d did not end; aborting it", served.mountpoint, served.conn)
            fuse.abort_connection(served.conn)
            served.thread.join(_END_WAIT)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cowstore.drivers.aufs.unionfs.server",
        description="serve the union mounts of one aufs driver home",
    )
    parser.add_argument("--socket", required=True, help="control socket path")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
    )
    os.umask(0)  # modes arrive with the caller's umask already applied by the kernel
    os.chdir("/")  # a working directory inside a union mount would keep it busy forever
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _terminate)
    server = UnionServer()
    control = service.serve_control(server, args.socket)
    log.info("union server %d listening on %s", os.getpid(), args.socket)
    try:
        server.stopped.wait()
        server.wait_for_reply()
    finally:
        server.stopping.set()
        server.unmount_all()
        control.remove_socket(args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
