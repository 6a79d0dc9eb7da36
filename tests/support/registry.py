"""Real registries for the tests: Debian's docker-registry (distribution 2.8) on 127.0.0.1.

Each server gets its own storage directory and a free loopback port, and is always
stopped. TLS comes from a throwaway CA made with openssl, Basic auth from an htpasswd
file (bcrypt, apache2-utils), and Bearer auth from a small token server here that signs
RS256 JWTs with openssl and names its certificate in the `x5c` header (the registry
checks it against its `rootcertbundle`).
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

REGISTRY = "docker-registry"


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (scripts/install-system-packages.sh)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def openssl(*args: str | pathlib.Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


@dataclass
class CertAuthority:
    """A CA and a server certificate for 127.0.0.1 and localhost, signed by it."""

    directory: pathlib.Path
    ca_crt: pathlib.Path
    ca_key: pathlib.Path
    server_crt: pathlib.Path
    server_key: pathlib.Path


def self_signed(key: pathlib.Path, cert: pathlib.Path, name: str) -> None:
    """A new RSA key and a self-signed certificate for it, valid two days."""
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key,
        "-out",
        cert,
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
    )


def _signed(ca_crt: pathlib.Path, ca_key: pathlib.Path, base: pathlib.Path, name: str, extension: str) -> None:
    """A certificate at `base` (NAME.crt or NAME.cert) for a new key NAME.key, signed by the CA."""
    key, csr, ext = base.with_suffix(".key"), base.with_suffix(".csr"), base.with_suffix(".ext")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    ext.write_text(extension + "\n")
    openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca_crt,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-out",
        base,
        "-days",
        "2",
        "-extfile",
        ext,
    )


def make_ca(directory: pathlib.Path, name: str = "cowstore test CA") -> CertAuthority:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    self_signed(ca_key, ca_crt, name)
    _signed(ca_crt, ca_key, directory / "server.crt", "127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    return CertAuthority(directory, ca_crt, ca_key, directory / "server.crt", directory / "server.key")


def client_certificate(ca: CertAuthority, cert_dir: pathlib.Path) -> None:
    """`client.cert` and `client.key` in `cert_dir` (Docker's names), signed by the CA for TLS client auth."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    _signed(ca.ca_crt, ca.ca_key, cert_dir / "client.cert", "cowstore-client", "extendedKeyUsage=clientAuth")
    for leftover in ("client.csr", "client.ext"):
        (cert_dir / leftover).unlink()


def htpasswd(path: pathlib.Path, user: str, password: str) -> pathlib.Path:
    done = subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True, text=True, check=True)
    path.write_text(done.stdout)
    return path


@dataclass
class RegistryServer:
    host: str  # 127.0.0.1:PORT
    root: pathlib.Path
    process: subprocess.Popen
    scheme: str = "http"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def _without_registry_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment minus REGISTRY_* variables: the registry reads them as configuration
    (REGISTRY_AUTH_FILE, podman's credential file variable, would become `auth: file` and stop it)."""
    return {key: value for key, value in environ.items() if not key.startswith("REGISTRY_")}


def start_registry(
    workdir: pathlib.Path,
    *,
    tls: CertAuthority | None = None,
    client_auth: bool = False,
    auth: dict | None = None,
    proxy: dict | None = None,
    env: dict[str, str] | None = None,
) -> RegistryServer:
    """Start `docker-registry serve` and wait until /v2/ answers."""
    need(REGISTRY)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    http_config: dict = {"addr": f"127.0.0.1:{port}", "secret": "cowstore-tests"}
    if tls is not None:
        http_config["tls"] = {"certificate": str(tls.server_crt), "key": str(tls.server_key)}
        if client_auth:  # clients must show a certificate signed by the test CA
            http_config["tls"]["clientcas"] = [str(tls.ca_crt)]
    config: dict = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}, "delete": {"enabled": True}},
        "http": http_config,
    }
    if auth:
        config["auth"] = auth
    if proxy:
        config["proxy"] = proxy
    (workdir / "config.yml").write_text(json.dumps(config))  # YAML is a superset of JSON
    log = open(workdir / "registry.log", "wb")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen(
        [REGISTRY, "serve", str(workdir / "config.yml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**_without_registry_settings(os.environ), **(env or {})},
    )
    log.close()
    server = RegistryServer(f"127.0.0.1:{port}", workdir, process, "https" if tls else "http")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {(workdir / 'registry.log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError("docker-registry did not start listening")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """Distribution's token auth: `GET /token?service=&scope=` with Basic credentials -> a signed JWT."""

    directory: pathlib.Path
    users: dict[str, str]
    service: str = "cowstore-test-registry"
    issuer: str = "cowstore-test-issuer"
    lifetime: int = 300
    requests: list[str] = field(default_factory=list)  # the scope sets asked for, in order
    readonly: set[str] = field(default_factory=set)  # users who get pull access only

    def __post_init__(self) -> None:
        self.key = self.directory / "token.key"
        self.cert = self.directory / "token.crt"
        self.directory.mkdir(parents=True, exist_ok=True)
        self_signed(self.key, self.cert, "cowstore token signer")
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], capture_output=True, check=True
        ).stdout
        self._x5c = base64.b64encode(der).decode()
        self.port = free_port()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                owner._answer(self)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def registry_auth(self) -> dict:
        return {
            "token": {
                "realm": self.realm,
                "service": self.service,
                "issuer": self.issuer,
                "rootcertbundle": str(self.cert),
            }
        }

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query)
        user = None
        header = handler.headers.get("Authorization", "")
        if header.startswith("Basic "):
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if self.users.get(name) != password:
                handler.send_response(401)
                handler.end_headers()
                return
            user = name
        scopes = query.get("scope", [])
        self.requests.append(" ".join(sorted(scopes)))
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            allowed = [a for a in actions.split(",") if user and (a == "pull" or user not in self.readonly)]
            access.append({"type": kind, "name": name, "actions": allowed})
        body = json.dumps({"token": self._sign(user or "", access), "expires_in": self.lifetime}).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _sign(self, subject: str, access: list) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + self.lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": os.urandom(8).hex(),
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
        ).stdout
        return f"{signing_input}.{_b64url(signature)}"


def wait_http(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310 - loopback only
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
