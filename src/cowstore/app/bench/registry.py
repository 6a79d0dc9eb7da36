"""A private registry for the pull and push experiments: Debian's docker-registry on loopback.

Plain HTTP on 127.0.0.1 and a free port, storage in the scratch space, no auth, its
access log off. Every engine speaks plain HTTP to it without a certificate: dockerd
counts 127.0.0.0/8 as an insecure registry by default (it tries TLS, then falls back),
cowstore uses HTTP for loopback hosts, and podman and skopeo are given
`--tls-verify=false`. The server runs in a session of its own (a Ctrl-C on the terminal
reaches the bench, which stops it in order) and is always stopped: by `close()`, or at
interpreter exit if a caller never got that far.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
import weakref

from cowstore.errors import NotSupported, Unavailable
from cowstore.host import fsutil

SERVER = "docker-registry"
SKOPEO = "skopeo"
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0


class RegistryError(Unavailable):
    """The bench's registry did not start, or copying an image into it failed."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, SIGKILL if it lingers; never raises."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class LocalRegistry:
    """One running docker-registry whose storage is `directory/data` (removed by close)."""

    def __init__(self, directory: pathlib.Path) -> None:
        server = shutil.which(SERVER)
        if server is None:
            raise NotSupported(f"{SERVER} is not installed (apt-get install docker-registry)")
        self.directory = directory
        port = _free_port()
        self.host = f"127.0.0.1:{port}"
        config = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(directory / "data")}, "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": "cowstore-bench"},
        }
        (directory / "config.yml").write_text(json.dumps(config))  # YAML is a superset of JSON
        # REGISTRY_* variables would be read as configuration (podman's REGISTRY_AUTH_FILE among them).
        env = {key: value for key, value in os.environ.items() if not key.startswith("REGISTRY_")}
        with open(directory / "registry.log", "wb") as log:
            self.process = subprocess.Popen(
                [server, "serve", str(directory / "config.yml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self._finalizer = weakref.finalize(self, _stop, self.process)
        try:
            self._wait(port)
        except BaseException:
            self.close()
            raise

    def _wait(self, port: int) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RegistryError(f"{SERVER} exited at start: {self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RegistryError(f"{SERVER} did not listen on {self.host} within {_START_TIMEOUT:.0f} s")

    def _log_tail(self) -> str:
        text = (self.directory / "registry.log").read_text(errors="replace").strip()
        return text.splitlines()[-1] if text else "no output"

    def copy_archive(self, archive: pathlib.Path, path: str) -> str:
        """Copy a docker-save archive into the registry as `path` (NAME:TAG) with skopeo, which
        compresses each layer with its own gzip once: every engine then pulls the same blobs."""
        if shutil.which(SKOPEO) is None:
            raise NotSupported(f"{SKOPEO} is not installed (apt-get install skopeo)")
        ref = f"{self.host}/{path}"
        done = subprocess.run(
            [
                SKOPEO,
                "--insecure-policy",
                "copy",
                "-q",
                "--dest-tls-verify=false",
                f"docker-archive:{archive}",
                f"docker://{ref}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            reason = (done.stderr or done.stdout).strip().splitlines()
            raise RegistryError(f"skopeo copy to {ref} failed: {reason[-1] if reason else done.returncode}")
        return ref

    def close(self) -> None:
        """Stop the server and delete its storage; never raises."""
        self._finalizer()
        fsutil.remove_tree(self.directory)
