"""The Docker peer: a private dockerd (docker.io), started by the bench and always stopped.

The daemon keeps everything in the scratch space — data root on the common ext4,
exec root under /run (its containerd socket path must stay short), its own socket —
with networking off (`--iptables=false --bridge=none --ip-masq=false`), so it never
touches the system's Docker. The package's own client is called explicitly: a newer
client may sit earlier on PATH and speak an API the 20.10 daemon does not.

Docker has no "mount" command: `docker create` prepares the container's layers but the
overlay is mounted only while the container runs. So the docker subject is not
`mountable`; experiments measure what it does honestly (create alone, or work done
inside `docker run`) and say so. Its containerd shims double-fork: a
:class:`~cowstore.app.bench.reaper.Subreaper` collects them, and close() kills any the
daemon left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import time
from collections.abc import Sequence

from cowstore.app.bench.cli_peer import CliPeer, last_line, output_of, short_run_dir
from cowstore.app.bench.reaper import Subreaper
from cowstore.app.bench.scratch import Scratch
from cowstore.errors import CowstoreError, NotSupported, Unavailable
from cowstore.host import fsutil, mounts

CLIENT = pathlib.Path("/usr/bin/docker")
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0


class DockerError(Unavailable):
    """A docker command failed."""


class DockerSubject(CliPeer):
    """Docker 20.10 (dockerd + containerd + runc) with its overlay2 driver, private to this run."""

    mountable = False

    def __init__(self, scratch: Scratch, driver: str = "overlay2", data_root: pathlib.Path | None = None) -> None:
        daemon = shutil.which("dockerd")
        if daemon is None or not CLIENT.exists():
            raise NotSupported(
                f"no Docker engine: {'dockerd' if daemon is None else CLIENT} is not installed; "
                "apt-get install docker.io"
            )
        self.name = f"docker-{driver}"
        self.driver = driver
        self.data_root = self.storage = data_root or scratch.path("docker")
        self.state = scratch.path("docker-state")
        self.exec_root = short_run_dir("cbd-")
        self.socket = self.state / "docker.sock"
        if len(str(self.socket)) > 100:
            self.socket = self.exec_root / "docker.sock"
        (self.state / "daemon.json").write_text("{}\n")
        self.env = dict(os.environ, DOCKER_CONFIG=str(self.state / "client"))
        self.reaper = Subreaper()
        self.daemon: subprocess.Popen[bytes] | None = None
        try:
            self._start(daemon)
            self.version = self._run("version", "--format", "{{.Server.Version}}")
            self.floor_ms = self._floor("--format", "{{.Server.Version}}")
        except BaseException:
            self.close()
            raise

    def _start(self, daemon: str) -> None:
        cmd = [
            daemon,
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "--pidfile",
            str(self.state / "docker.pid"),
            "--config-file",
            str(self.state / "daemon.json"),
            "-H",
            f"unix://{self.socket}",
            "--storage-driver",
            self.driver,
            "--iptables=false",
            "--bridge=none",
            "--ip-masq=false",
            "--exec-opt",
            "native.cgroupdriver=cgroupfs",
            "--log-level",
            "warn",
        ]
        log = open(self.state / "dockerd.log", "wb")  # noqa: SIM115 - the daemon writes to it until close()
        try:
            # Its own session: a Ctrl-C on the terminal reaches the bench, which stops the daemon in order.
            self.daemon = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise NotSupported(f"dockerd exited at start ({self.daemon.returncode}): {self._log_error()}")
            if self.socket.exists() and self._call("version").returncode == 0:
                return
            time.sleep(0.1)
        raise NotSupported(f"dockerd did not answer within {_START_TIMEOUT:.0f} s: {self._log_error()}")

    def _log_error(self) -> str:
        text = (self.state / "dockerd.log").read_text(errors="replace")
        errors = [line for line in text.splitlines() if "level=error" in line or "level=fatal" in line]
        return last_line("\n".join(errors) or text) or "no output"

    def _call(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CLIENT), "-H", f"unix://{self.socket}", *args],
            capture_output=True,
            text=True,
            check=False,
            env=self.env,
        )

    def _run(self, *args: str) -> str:
        result = self._call(*args)
        self.reaper.reap()
        return output_of(result, f"docker {args[0]}", DockerError)

    def cli(self, *args: str) -> str:
        """Any command of the daemon's own client; its stdout (DockerError when it fails)."""
        return self._run(*args)

    def describe(self) -> str:
        runtime = self._run("info", "--format", "{{.DefaultRuntime}}")
        status = json.loads(self._run("info", "--format", "{{json .DriverStatus}}") or "[]")
        facts = ", ".join(f"{key} {value}" for key, value in status or [])
        return (
            f"docker {self.version} (dockerd from docker.io), --storage-driver {self.driver} ({facts}), "
            f"runtime {runtime}, "
            f"data root on {fsutil.backing_fs(self.data_root)}; CLI round trip floor {self.floor_ms:.0f} ms; "
            "create is not a mount (docker mounts a container only while it runs)"
        )

    def load_image(self, tar: pathlib.Path) -> str:
        """`docker import` of the layer tar: the same one-layer image every subject imports."""
        return self._run("import", str(tar), f"cowstore-bench/{tar.stem}:latest")

    def run(self, image: str, argv: Sequence[str], name: str | None = None) -> str:
        """Run `argv` in a new container to completion; kept as `name` when given, else removed."""
        keep = ["--name", name] if name else ["--rm"]
        return self._run("run", *keep, "--network", "none", image, *argv)

    def commit(self, container: str) -> str:
        return self._run("commit", container)

    def close(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL), end its helpers, undo its mounts; never raises."""
        try:
            if self.daemon is not None and self.daemon.poll() is None:
                self.daemon.terminate()
                try:
                    self.daemon.wait(_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.daemon.kill()
                    self.daemon.wait()
            roots = (str(self.data_root), str(self.exec_root))
            self.reaper.end(lambda cmd: any(root in cmd for root in roots) or "containerd-shim" in cmd)
        finally:
            self.reaper.close()
            for root in (self.exec_root, self.data_root):
                with contextlib.suppress(CowstoreError):
                    mounts.unmount_all(root)
            fsutil.remove_tree(self.exec_root)
