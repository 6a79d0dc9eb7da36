"""Helper servers that outlive the command that started them, and their control sockets.

A FUSE-backed driver needs a process that answers the kernel for as long as its
mounts or devices are in use, longer than any one `cowstore` command. Both such
drivers run one server per driver home, supervised the same way:

- `start` launches `python -m <module>` in a new session (it survives the caller
  and its terminal), logging to a file, and returns once the server answers on its
  Unix control socket; a second `start` finds the running server and reuses it;
- requests are one JSON object per line each way (`ServiceClient.call`); a server
  answers with a result or with an error whose class and category cross the socket,
  so the caller re-raises the same kind of error;
- `stop` asks the server to shut down and waits until its process is gone.

The socket is mode 0600 in a root-only directory: only root can drive a server.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from cowstore import errors
from cowstore.errors import CowstoreError, Unavailable
from cowstore.host.paths import socket_address

_CATEGORY_BY_NAME = {cat.__name__: cat for cat in errors.CATEGORIES}


class ServiceUnavailable(Unavailable):
    """No server answers on the control socket."""


@contextlib.contextmanager
def _addressable(path: str) -> Iterator[str]:
    """`path` as a socket address (see `cowstore.host.paths.socket_address`)."""
    address, fd = socket_address(path)
    try:
        yield address
    finally:
        if fd is not None:
            os.close(fd)


def listening(path: str | os.PathLike) -> bool:
    """Whether a server accepts connections on the Unix socket at `path` (nothing is sent)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
        probe.settimeout(1.0)
        with _addressable(os.fspath(path)) as address:
            try:
                probe.connect(address)
            except OSError:
                return False
    return True


class ServiceClient:
    """Calls into the server listening on one control socket."""

    def __init__(
        self,
        socket_path: str | os.PathLike,
        *,
        error_classes: Mapping[str, type[CowstoreError]] | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.socket_path = os.fspath(socket_path)
        self.error_classes = dict(error_classes or {})
        self.timeout = timeout

    def call(self, op: str, **args: Any) -> Any:
        """Run `op` in the server; its errors come back as the same class (or category)."""
        request = json.dumps({"op": op, **args}).encode() + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(self.timeout)
                with _addressable(self.socket_path) as address:
                    sock.connect(address)
                sock.sendall(request)
                with sock.makefile("rb") as stream:
                    line = stream.readline()
        except OSError as exc:
            raise ServiceUnavailable(f"server at {self.socket_path} is not reachable: {exc.strerror or exc}") from None
        if not line:
            raise ServiceUnavailable(f"server at {self.socket_path} closed the connection during {op!r}")
        reply = json.loads(line)
        if "error" in reply:
            cls = self.error_classes.get(reply.get("kind", "")) or _CATEGORY_BY_NAME.get(
                reply.get("category", ""), CowstoreError
            )
            raise cls(reply["error"])
        return reply.get("result")

    def alive(self) -> bool:
        """Whether a server answers and says it is ready."""
        try:
            return bool(self.call("ping"))
        except ServiceUnavailable:
            return False


class ControlServer:
    """Answers control requests by calling `handler.op_<name>(**args)`, one thread per client.

    A handler must offer `op_ping` (ready or not); `op_pid` is answered here.
    """

    def __init__(self, handler: object) -> None:
        self.handler = handler
        self.socket_inode = 0

    def handle(self, request: dict[str, Any]) -> Any:
        op = request.pop("op")
        if op == "pid":
            return os.getpid()
        method = getattr(self.handler, f"op_{op}", None)
        if method is None:
            raise errors.InvalidArgument(f"unknown control operation {op!r}")
        return method(**request)

    def serve(self, path: str) -> None:
        """Listen on `path` forever (run it in a daemon thread)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as server:
            if os.path.exists(path):
                os.unlink(path)
            with _addressable(path) as address:
                server.bind(address)
            os.chmod(path, 0o600)
            self.socket_inode = os.stat(path).st_ino
            server.listen(16)
            while True:
                conn, _ = server.accept()
                threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def remove_socket(self, path: str) -> None:
        """Delete the socket if it is still ours (a newer server may have replaced it)."""
        try:
            if os.stat(path).st_ino == self.socket_inode:
                os.unlink(path)
        except FileNotFoundError:
            pass

    def _client(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                reply: dict[str, Any]
                try:
                    reply = {"result": self.handle(json.loads(line))}
                except CowstoreError as exc:
                    category = errors.category(exc)
                    reply = {
                        "error": str(exc),
                        "kind": type(exc).__name__,
                        "category": category.__name__ if category else "",
                    }
                except (TypeError, ValueError, KeyError) as exc:
                    reply = {"error": f"bad control request: {exc}", "kind": "", "category": "InvalidArgument"}
                stream.write(json.dumps(reply).encode() + b"\n")
                stream.flush()


def start(
    module: str,
    args: list[str],
    *,
    client: ServiceClient,
    log: pathlib.Path,
    timeout: float = 20.0,
    env: Mapping[str, str] | None = None,
) -> ServiceClient:
    """Start `python -m module args...` unless a server already answers `client`; wait until it does."""
    if client.alive():
        return client
    src = str(pathlib.Path(__file__).resolve().parents[2])
    child_env = dict(os.environ, **(env or {}))
    child_env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=child_env,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.alive():
            return client
        if proc.poll() is not None:
            tail = log.read_bytes()[-600:].decode(errors="replace").strip().splitlines()
            raise ServiceUnavailable(
                f"{module} exited with status {proc.returncode}: {tail[-1] if tail else 'no message'} (log: {log})"
            )
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise ServiceUnavailable(f"{module} did not come up within {timeout:g}s; see {log}")


def stop(client: ServiceClient, timeout: float = 20.0) -> bool:
    """Ask the server to shut down and wait until its process has exited; False if none ran."""
    try:
        pid = client.call("pid")
    except ServiceUnavailable:
        return False
    try:
        client.call("shutdown")
    except ServiceUnavailable:
        pass  # the server may exit before its reply is written; its exit is what is waited for
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running(pid):
            return True
        time.sleep(0.02)
    raise ServiceUnavailable(f"server {pid} did not exit within {timeout:g}s")


def running(pid: int) -> bool:
    """Whether `pid` still runs; reaps it when it is our child (a zombie has exited)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def serve_control(handler: object, path: str) -> ControlServer:
    """Start answering control requests for `handler` on `path` in a daemon thread."""
    control = ControlServer(handler)
    threading.Thread(target=control.serve, args=(path,), daemon=True).start()
    return control


def servers_below(directory: str | os.PathLike) -> list[int]:
    """Pids of helper servers (`python -m cowstore...`) whose arguments name a path below `directory`.

    What `start` launched for a store, found even when the control socket is gone.
    """
    base = os.path.realpath(directory).rstrip("/") + "/"
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [os.fsdecode(arg) for arg in argv]
        if "-m" not in args or not any(arg.startswith("cowstore.") for arg in args):
            continue
        if any(os.path.realpath(arg).startswith(base) for arg in args if arg.startswith("/")):
            found.append(int(entry.name))
    return sorted(found)


def terminate(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, and SIGKILL after `timeout` seconds; returns once the process is gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not running(pid):
            return
