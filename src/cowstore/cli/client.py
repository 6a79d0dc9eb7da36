"""The thin client of the store service: a hot command sent to `cowstore system service`.

Docker's and podman's clients answer in tens of milliseconds because the work runs in
a service that opened the store long before; a Python command pays for its interpreter
and for importing the store (some 100 ms) on every call. So when a store service listens
for the root a command names, the command line is sent there as it is, and its output,
errors and exit code come back to be printed here. This module runs before anything
else of cowstore is imported, and imports only `os`, `sys`, `_socket` (the C module:
`socket` itself loads enum and selectors, some 9 ms) and `cowstore.host.paths`.

The client only filters roughly (a hot command word after the global options); the
service decides exactly, with the fast path's own parser, and declines what it would
not run as this process would (click's commands, help, another driver or options).
What it declines, and any command when no service answers (none running, a stale
socket, a service killed), runs in this process as before: daemonless, like podman.

One request per connection:

    request = b"CWS1" + length (4 bytes, big-endian) + fields joined by NUL bytes:
              client's cwd, root as the client resolved it, $COWSTORE_DRIVER, argv...
    reply   = b"R" + exit code (1 byte) + stdout length (4) + stdout + stderr length (4) + stderr
            | b"D"                               declined: the client runs the command itself
            | b"E" + one line of text + b"\\n"    refused or malformed: printed, exit 1
"""

from __future__ import annotations

import _socket
import os
import sys

from cowstore.host.paths import SERVICE_SOCKET, default_root, socket_address

MAGIC = b"CWS1"
MAX_REQUEST = 1 << 20
# The first command word of every command the service may run; it decides exactly.
_HOT = frozenset(("create", "mount", "umount", "rm", "images", "ps", "inspect", "container", "image", "import", "load"))
# Commands that show a progress bar on a terminal: run here when the output is one.
_BATCH = frozenset(("import", "load"))
# Global options taking a value, by every spelling -> the one they are kept under.
_GLOBAL_VALUES = {
    "--root": "--root",
    "--driver": "--driver",
    "-s": "--driver",
    "--storage-opt": "--storage-opt",
    "--limit": "--limit",
    "--host": "--host",
    "-H": "--host",
}
_GLOBAL_FLAGS = frozenset(("--sync", "--no-sync"))
# A command that only reads may be run again here when the service vanished mid-request.
_READ_ONLY = (
    ("images",),
    ("ps",),
    ("inspect",),
    ("image", "ls"),
    ("container", "ls"),
    ("image", "inspect"),
    ("container", "inspect"),
)


def socket_path(value: str) -> str | None:
    """The path of a `unix://PATH` or plain-path address; None for any other scheme."""
    if value.startswith("unix://"):
        return value[len("unix://") :]
    return None if "://" in value else value


def _globals(argv: list[str]) -> tuple[dict[str, str], list[str]] | None:
    """The global options given a value (last one wins) and the words from the command on;
    None for a flag this filter does not pass to the service (--debug, help, unknown)."""
    found: dict[str, str] = {}
    index = 0
    while index < len(argv):
        token = argv[index]
        if not token.startswith("-"):
            return found, argv[index:]
        name, eq, value = token.partition("=")
        if name in _GLOBAL_VALUES:
            if not eq:
                index += 1
                if index >= len(argv):
                    return None
                value = argv[index]
            found[_GLOBAL_VALUES[name]] = value
        elif name not in _GLOBAL_FLAGS or eq:
            return None
        index += 1
    return None


def _request(argv: list[str]) -> tuple[str, bytes, bool] | None:
    """(socket path, request, whether the command only reads) for a hot command, else None."""
    parsed = _globals(argv)
    if parsed is None or parsed[1][0] not in _HOT:
        return None
    options, words = parsed
    if _BATCH.intersection(words[:2]) and os.isatty(1) and os.isatty(2):
        return None
    try:
        cwd = os.getcwd()
    except OSError:  # a working directory since removed: the command runs here, as before
        return None
    root = os.path.join(cwd, options.get("--root") or default_root())
    host = options.get("--host") or os.environ.get("COWSTORE_HOST")
    path = socket_path(host) if host else os.path.join(root, SERVICE_SOCKET)
    if not path:
        return None
    fields = [cwd, root, os.environ.get("COWSTORE_DRIVER", ""), *argv]
    payload = b"\0".join(os.fsencode(field) for field in fields)  # no field can hold a NUL
    if len(payload) > MAX_REQUEST:
        return None
    read_only = tuple(words[:1]) in _READ_ONLY or tuple(words[:2]) in _READ_ONLY
    return path, MAGIC + len(payload).to_bytes(4, "big") + payload, read_only


def _exchange(path: str, request: bytes) -> bytes | None:
    """The service's whole reply (empty when it went away before answering in full); None
    when the request could not be delivered (the service runs only complete requests)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    chunks: list[bytes] = []
    try:
        address, fd = socket_address(path)
        try:
            sock.settimeout(2.0)
            sock.connect(address)
        finally:
            if fd is not None:
                os.close(fd)
        sock.settimeout(None)
        sock.sendall(request)
    except OSError:
        sock.close()
        return None
    try:
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    except OSError:
        return b""
    finally:
        sock.close()
    return b"".join(chunks)


def _result(reply: bytes) -> tuple[int, bytes, bytes] | None:
    """(exit code, stdout, stderr) of a whole b"R" reply; None when it is cut short."""
    if len(reply) < 10:
        return None
    out_end = 6 + int.from_bytes(reply[2:6], "big")
    err_end = out_end + 4 + int.from_bytes(reply[out_end : out_end + 4], "big")
    if err_end != len(reply):
        return None
    return reply[1], reply[6:out_end], reply[out_end + 4 :]


def _print(reply: bytes, path: str, read_only: bool) -> int | None:
    """Print a reply of the service; its exit code, or None to run the command here."""
    kind = reply[:1]
    if kind == b"E":
        sys.stderr.buffer.write(b"cowstore: " + reply[1:].rstrip(b"\n") + b"\n")
        sys.stderr.flush()
        return 1
    result = _result(reply) if kind == b"R" else None
    if result is None:
        if kind == b"D" or read_only:
            return None
        sys.stderr.write(
            f"cowstore: the store service at {path} went away before answering in full; "
            "the command may or may not have run\n"
        )
        return 1
    code, out, err = result
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.stderr.buffer.write(err)
    sys.stderr.flush()
    return code


def try_service(argv: list[str]) -> int | None:
    """Run `argv` in the store service when one answers for its root: the exit code, or None
    to run the command in this process (no service, or one that declines it)."""
    prepared = _request(argv)
    if prepared is None:
        return None
    path, request, read_only = prepared
    reply = _exchange(path, request)
    return None if reply is None else _print(reply, path, read_only)
