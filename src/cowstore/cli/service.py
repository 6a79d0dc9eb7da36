"""`cowstore system service`: the store opened once, answering the hot commands on a socket.

What `podman system service` and dockerd do for their clients: a process that keeps the
store open, so that a command costs a connection and the work instead of an interpreter
start and the store's imports. Each request is a command line (`cowstore.cli.client`
has the protocol); it is parsed by the fast path's own parser and run by the same
bodies (`cowstore.cli.fast`, `cowstore.cli.verbs`) with stdout and stderr captured, so
what the client prints, and its exit code, are what the command run in-process gives.

`import` and `load` of a file run there too: the service opens the file, named relative to
the client's directory, as the client would (it serves only its own uid); from stdin, or
with a terminal to draw a progress bar on, they run in the client. The service runs nothing
else: a command line the fast path would leave to click, or
one naming another root, driver or options than the service's, is declined and the
client runs it itself. Requests are read concurrently (a slow client holds up nobody)
and run one at a time; other processes may use the same root meanwhile, as the store
allows, and before each command the service finishes what a process that died since
left undone, as opening the store would. Only the socket owner's uid is served (the
socket is 0600, and each peer's credentials are checked); requests are bounded; a
malformed one gets one line of error. SIGTERM and SIGINT stop the service: it finishes
the running command, closes the store (mounts stay, as after any command) and removes
its socket. A socket left by a service that died is replaced at start. Under systemd
the socket may also be the unit's (socket activation, `LISTEN_FDS`): it is then used as
passed and left in place.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import signal
import socket
import sqlite3
import stat
import struct
import sys
import threading
import traceback

from cowstore.cli import fast
from cowstore.cli.app import App
from cowstore.cli.client import MAGIC, MAX_REQUEST, socket_path
from cowstore.errors import CowstoreError, InUse, InvalidArgument
from cowstore.host.paths import SERVICE_SOCKET, socket_address
from cowstore.host.service import listening

# Seconds a client may take to send its request, and to take its reply.
_IO_TIMEOUT = 5.0
# Connections served at once; the clients of more run their commands themselves.
_MAX_CLIENTS = 32
_DECLINED = b"D"


class ServiceRunning(InUse):
    """Another store service already answers on the socket."""


class BadRequest(InvalidArgument):
    """A request that is not a cowstore client's."""


def default_socket(state: App) -> str:
    return str(state.store.root / SERVICE_SOCKET)


def parse_address(value: str) -> str:
    """The socket path of `--socket` (`unix://PATH` or a path)."""
    path = socket_path(value)
    if not path:
        raise InvalidArgument(f"the store service listens on a unix:// socket, not {value}")
    return path


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of `conn` (SO_PEERCRED, set at its connect)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def read_request(conn: socket.socket) -> list[str]:
    """The fields of one request: cwd, root, $COWSTORE_DRIVER, argv..."""
    header = _read(conn, 8)
    if header[:4] != MAGIC:
        raise BadRequest("malformed request: not a cowstore client's")
    length = int.from_bytes(header[4:], "big")
    if length > MAX_REQUEST:
        raise BadRequest(f"request of {length} bytes is over the limit of {MAX_REQUEST}")
    fields = [os.fsdecode(field) for field in _read(conn, length).split(b"\0")]
    if len(fields) < 4:
        raise BadRequest("malformed request: no command line")
    return fields


def _read(conn: socket.socket, size: int) -> bytes:
    data = bytearray()
    try:
        while len(data) < size:
            chunk = conn.recv(min(size - len(data), 1 << 16))
            if not chunk:
                raise BadRequest("malformed request: cut short")
            data += chunk
    except TimeoutError:
        raise BadRequest(f"request not sent within {_IO_TIMEOUT:g}s") from None
    return bytes(data)


def activated_socket() -> socket.socket | None:
    """The listening socket systemd passed as descriptor 3 (socket activation), if any.

    The variables are removed so that nothing this process starts takes them as its own."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    listener = socket.socket(fileno=3)
    listener.set_inheritable(False)
    if listener.family != socket.AF_UNIX or listener.type != socket.SOCK_STREAM:
        listener.detach()
        raise InvalidArgument("the socket systemd passed is not a unix stream socket")
    return listener


def result(code: int, out: bytes, err: bytes) -> bytes:
    return b"R" + bytes([code & 0xFF]) + len(out).to_bytes(4, "big") + out + len(err).to_bytes(4, "big") + err


def refusal(message: str) -> bytes:
    return b"E" + " ".join(message.split()).encode() + b"\n"


class StoreService:
    """One store, opened once, serving the hot commands on `path` until stopped."""

    def __init__(self, state: App, path: str) -> None:
        self.state = state
        self.path = path
        self.root = os.path.realpath(state.store.root)
        self.uid = os.geteuid()
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(_MAX_CLIENTS)
        self.inode = 0

    def bind(self) -> socket.socket:
        """Listen on the socket, replacing one no service answers on any more."""
        if os.path.lexists(self.path):
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise InvalidArgument(f"{self.path} exists and is not a socket")
            if listening(self.path):
                raise ServiceRunning(f"a store service already listens on {self.path}")
            os.unlink(self.path)
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        address, fd = socket_address(self.path)
        umask = os.umask(0o177)  # born 0600: no moment at which another user could connect
        try:
            listener.bind(address)
        except OSError:
            listener.close()
            raise
        finally:
            os.umask(umask)
            if fd is not None:
                os.close(fd)
        os.chmod(self.path, 0o600)
        self.inode = os.stat(self.path).st_ino
        listener.listen(64)
        return listener

    def serve(self) -> None:
        """Accept requests until SIGTERM or SIGINT; then clean up and return."""
        activated = activated_socket()
        listener = activated or self.bind()
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        handlers = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous_fd = signal.set_wakeup_fd(wake_w)
        _log(f"serving {self.root} on {activated.getsockname() if activated else self.path}")
        try:
            while True:
                readable = select.select([listener.fileno(), wake_r], [], [])[0]
                if wake_r in readable and _woken(wake_r):
                    break
                if listener.fileno() in readable:
                    self._accept(listener)
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            listener.close()
            self.remove_socket()
            os.close(wake_r)
            os.close(wake_w)
            with self.lock:
                self.state.close()
            _log("stopped")

    def remove_socket(self) -> None:
        """Delete the socket if it is still ours (a newer service may have replaced it)."""
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        if not self.slots.acquire(blocking=False):
            with conn, contextlib.suppress(OSError):
                conn.sendall(_DECLINED)
            return
        threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(_IO_TIMEOUT)
                reply = self.answer(conn)
                conn.sendall(reply)
                _drain(conn)
        except OSError:
            pass  # the client went away; the command, if it ran, is done
        finally:
            self.slots.release()

    def answer(self, conn: socket.socket) -> bytes:
        """The reply to the request on `conn`: refused, declined, or the command's result."""
        uid = peer_uid(conn)
        if uid != self.uid:
            return refusal(f"permission denied: uid {uid} may not use the store service of {self.root}")
        try:
            fields = read_request(conn)
        except BadRequest as exc:
            return refusal(str(exc))
        return self.run(fields[0], fields[1], fields[2], fields[3:])

    def run(self, cwd: str, root: str, driver: str, argv: list[str]) -> bytes:
        """Run one command line as `cowstore` would in the client's place, or decline it."""
        planned = fast.plan(argv, {"COWSTORE_ROOT": root, "COWSTORE_DRIVER": driver}, cwd, interactive=False)
        if planned is None:
            return _DECLINED
        request, command, arguments = planned
        if not self._same_store(request, cwd):
            return _DECLINED
        out, err = io.StringIO(), io.StringIO()
        with self.lock, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                self.state.store.recover_interrupted()
                code = fast.run_plan(self.state, command, arguments)
            except (CowstoreError, OSError, sqlite3.Error) as exc:
                err.write(f"cowstore: {exc}\n")
                code = 1
            except Exception:  # noqa: BLE001 - a bug must not stop the service: logged, one line back
                traceback.print_exc(file=sys.__stderr__)
                err.write("cowstore: internal error in the store service (its log has the traceback)\n")
                code = 1
        return result(code, _encode(out), _encode(err))

    def _same_store(self, request: App, cwd: str) -> bool:
        """Whether the request's global options open the store this service holds, the same way."""
        mine = self.state
        root = os.path.realpath(os.path.join(cwd, request.root or ""))
        return (
            root == self.root
            and request.driver in (None, mine.store.driver.name)
            and request.storage_opts in ({}, mine.storage_opts)
            and request.sync == mine.sync
            and request.limits in (None, mine.limits)
            and not request.debug
        )


def _encode(stream: io.StringIO) -> bytes:
    return stream.getvalue().encode("utf-8", "surrogateescape")


def _drain(conn: socket.socket) -> None:
    """End the reply, then read what the client sent beyond its request (bounded) until it
    closes: closing with unread input would reset the connection and lose the reply."""
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(1.0)
    for _ in range(16):
        if not conn.recv(1 << 16):
            return


def _ignore(signum: int, frame: object) -> None:
    """The Python side of SIGTERM/SIGINT: nothing; the wakeup descriptor ends the loop."""


def _woken(wake_r: int) -> bool:
    """Whether a stopping signal arrived (read from the wakeup descriptor)."""
    try:
        received = os.read(wake_r, 64)
    except BlockingIOError:
        return False
    return any(sig in (signal.SIGTERM, signal.SIGINT) for sig in received)


def _log(message: str) -> None:
    """One line in the service's log (its stderr: the journal, under systemd)."""
    if sys.__stderr__ is not None:
        sys.__stderr__.write(f"cowstore system service: {message}\n")
        sys.__stderr__.flush()
