"""A fault-injecting HTTP proxy in front of a test registry (loopback only, bounded).

Requests are forwarded to the upstream registry unchanged, except those a fault rule
matches (by method and a substring of the path), each rule firing a set number of times:

- `drop`: send the status line, headers and about half the body, then close (a
  connection lost mid-blob: the client sees a short read);
- `status`: answer with that HTTP status instead (500, 429 with `Retry-After: 0`);
- `reset`: close the connection without answering;
- `redirect`: answer 307 to the same path on another base URL;
- `stall`: send half the body, then hold the connection until `release` is set (a
  pull to kill mid-blob).

It can also demand Basic credentials itself (`basic_auth`) and records the
Authorization header of every request it saw.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import threading
from dataclasses import dataclass, field

from tests.support.registry import free_port

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


@dataclass
class Fault:
    method: str
    path_part: str
    action: str  # drop | status | reset | redirect | stall
    times: int = 1
    status: int = 500
    target: str = ""  # base URL for redirect

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and method == self.method and self.path_part in path


@dataclass
class FaultProxy:
    upstream: str  # host:port of the registry (plain HTTP)
    host_name: str = "127.0.0.1"
    faults: list[Fault] = field(default_factory=list)
    basic_auth: tuple[str, str] | None = None
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Authorization)
    fired: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.port = free_port()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                owner._handle(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"{self.host_name}:{self.port}"

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    self.fired.append(f"{fault.action} {method} {path}")
                    return fault
        return None

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        method, path = handler.command, handler.path
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        authorization = handler.headers.get("Authorization")
        with self._lock:
            self.seen.append((method, path, authorization))
        if self.basic_auth is not None:
            expected = "Basic " + base64.b64encode(":".join(self.basic_auth).encode()).decode()
            if authorization != expected:
                self._reply(handler, 401, {"WWW-Authenticate": 'Basic realm="faultproxy"'}, b"")
                return
        fault = self._take(method, path)
        if fault is not None and fault.action == "reset":
            handler.close_connection = True
            return
        if fault is not None and fault.action == "status":
            self._reply(handler, fault.status, {"Retry-After": "0"}, b'{"errors":[{"code":"UNAVAILABLE"}]}')
            return
        if fault is not None and fault.action == "redirect":
            self._reply(handler, 307, {"Location": fault.target + path}, b"")
            return
        connection = http.client.HTTPConnection(self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP and k.lower() != "host"}
            headers["Host"] = self.host
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        out = {k: v for k, v in response.getheaders() if k.lower() not in _HOP and k.lower() != "content-length"}
        if fault is not None and fault.action in ("drop", "stall") and len(data) > 1:
            handler.send_response(response.status)
            for key, value in out.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data[: len(data) // 2])
            handler.wfile.flush()
            if fault.action == "stall":
                self.release.wait(60)
            handler.close_connection = True
            return
        self._reply(handler, response.status, out, b"" if method == "HEAD" else data, len(data))

    @staticmethod
    def _reply(
        handler: http.server.BaseHTTPRequestHandler, status: int, headers: dict, body: bytes, length: int | None = None
    ) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        handler.end_headers()
        if body:
            handler.wfile.write(body)
