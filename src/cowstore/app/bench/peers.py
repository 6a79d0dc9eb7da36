"""Peer engines measured through their CLIs on the same image and backing: podman, docker.

Each peer keeps its storage in the scratch space (`--root`), never in the system's
store. Every per-command figure of a peer includes one CLI round trip, so the run
also measures that floor (`podman version`) and reports it beside the results. The
docker peer, which has to start and stop a daemon, lives in `cowstore.app.bench.docker_peer`.
"""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import subprocess

from cowstore.app.bench.cli_peer import CliPeer, output_of, short_run_dir
from cowstore.app.bench.docker_peer import DockerSubject
from cowstore.app.bench.scratch import Scratch
from cowstore.app.bench.subjects import Subject
from cowstore.errors import NotSupported, Unavailable
from cowstore.host import fsutil, mounts

PEERS = ("podman", "docker")


class PeerError(Unavailable):
    """A peer command failed."""


class PodmanSubject(CliPeer):
    """podman (containers/storage, its overlay driver) on a private root in the scratch space."""

    def __init__(self, scratch: Scratch, driver: str = "overlay") -> None:
        self.exe = shutil.which("podman")
        if self.exe is None:
            raise NotSupported("podman is not installed (apt-get install podman)")
        self.name = f"podman-{driver}"
        self.driver = driver
        self.root = self.storage = scratch.path("podman")
        # podman refuses a runroot longer than 50 characters: keep it short, under /run.
        self.runroot = short_run_dir("cb-")
        self._images = 0
        self.floor_ms = self._floor()

    def _run(self, *args: str) -> str:
        cmd = [
            self.exe or "podman",
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            self.driver,
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            *args,
        ]
        return output_of(
            subprocess.run(cmd, capture_output=True, text=True, check=False), f"podman {args[0]}", PeerError
        )

    def describe(self) -> str:
        version = self._run("version", "--format", "{{.Client.Version}}")
        return (
            f"podman {version}, --storage-driver {self.driver}, root on {fsutil.backing_fs(self.root)}; "
            f"CLI round trip floor {self.floor_ms:.0f} ms"
        )

    def load_image(self, tar: pathlib.Path) -> str:
        self._images += 1
        tag = f"localhost/cowstore-bench/image{self._images}:latest"
        self._run("import", "-q", str(tar), tag)
        return tag

    def mount(self, container: str) -> pathlib.Path:
        return pathlib.Path(self._run("mount", container))

    def unmount(self, container: str) -> None:
        self._run("unmount", container)

    def commit(self, container: str) -> str:
        return self._run("commit", "-q", container)

    def close(self) -> None:
        try:
            with contextlib.suppress(PeerError):
                self._run("system", "reset", "-f")
        finally:
            mounts.unmount_all(self.runroot)
            mounts.unmount_all(self.root)
            fsutil.remove_tree(self.runroot)


def open_peer(name: str, scratch: Scratch) -> Subject:
    """The peer subject `name`; NotSupported with the reason when it cannot run here."""
    if name == "podman":
        return PodmanSubject(scratch)
    if name == "docker":
        return DockerSubject(scratch)
    raise NotSupported(f"unknown peer {name!r} (known: {', '.join(PEERS)})")
