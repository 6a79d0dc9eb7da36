"""A private containerd for the tests, with one cowstore proxy snapshotter per driver.

containerd (Debian's 1.6) runs with its own root, state, socket and config; each
`[proxy_plugins.cowstore-<driver>]` points at a `cowstore snapshotter serve` of that
driver on a store root of its own. The CRI plugin is off (no CNI here); `ctr` talks to
the private socket. Stopping it stops containerd, then each snapshotter and the helper
servers of its store, and unmounts whatever is left below the test's directory.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import time

from cowstore.host import mounts

from .snapshotter import ServerProcess
from .tars import E, build

IMAGE = "docker.io/library/cowstore-busybox:latest"
_APPLETS = ("sh", "echo", "cat", "ls", "true", "mount", "id")


def busybox_archive() -> bytes:
    """A `docker save` tar of a one-layer image: Debian's static busybox and a few applets."""
    from ..images.imagearchives import docker_archive

    busybox = pathlib.Path("/bin/busybox").read_bytes()
    entries = [E(d, "dir", mode=0o755) for d in ("bin", "etc", "dev", "proc", "sys", "tmp", "root")]
    entries.append(E("bin/busybox", data=busybox, mode=0o755))
    entries += [E(f"bin/{name}", "symlink", target="busybox") for name in _APPLETS]
    entries.append(E("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"))
    return docker_archive([([build(*entries)], ["cowstore-busybox:latest"])])


def available() -> str | None:
    """Why containerd tests cannot run here, or None."""
    missing = [tool for tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2") if not _which(tool)]
    if missing:
        return f"not installed: {', '.join(missing)}"
    if os.geteuid() != 0:
        return "containerd needs root"
    return None


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


class Containerd:
    """containerd in `base`, with a snapshotter per driver in `drivers`."""

    def __init__(self, base: pathlib.Path, drivers: list[str]) -> None:
        self.base = base
        self.address = base / "containerd.sock"
        self.servers = {driver: ServerProcess(base / driver, driver) for driver in drivers}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "containerd.log"
        self.env = dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")

    def config(self) -> str:
        lines = [
            "version = 2",
            f'root = "{self.base / "root"}"',
            f'state = "{self.base / "state"}"',
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
            "[grpc]",
            f'  address = "{self.address}"',
            "[plugins]",
            '  [plugins."io.containerd.gc.v1.scheduler"]',
            "    deletion_threshold = 1",
            "[proxy_plugins]",
        ]
        for driver, server in self.servers.items():
            lines += [
                f"  [proxy_plugins.cowstore-{driver}]",
                '    type = "snapshot"',
                f'    address = "{server.socket}"',
            ]
        return "\n".join(lines) + "\n"

    def start(self) -> Containerd:
        for server in self.servers.values():
            server.start()
        config = self.base / "config.toml"
        config.write_text(self.config())
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(config)], stdout=log, stderr=log, env=self.env, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while self.ctr("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        return self

    def running(self, driver: str) -> bool:
        """Whether the driver's snapshotter came up (a driver this host cannot run exits)."""
        proc = self.servers[driver].proc
        return proc is not None and proc.poll() is None

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["ctr", "--address", str(self.address), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            for pid in _shims(self.base):
                os.kill(pid, signal.SIGKILL)
        finally:
            for point in mounts.mounts_under(self.base):
                mounts.umount(point, mounts.MNT_DETACH)
            for server in self.servers.values():
                server.release()


def _shims(base: pathlib.Path) -> list[int]:
    """containerd-shim processes of this containerd (they outlive it by design)."""
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and os.fsencode(base) in b" ".join(cmdline):
            found.append(int(proc.name))
    return found
