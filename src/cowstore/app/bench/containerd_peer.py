"""A private containerd for the bench, with cowstore's snapshotter as one of its proxy plugins.

containerd (Debian's 1.6) runs with a config, root, state and sockets of its own, so it
never touches a system containerd. Its root (where the built-in overlayfs snapshotter
keeps its layers) and cowstore's store are in the scratch space, on the same backing as
everything else, so the two snapshotters compare on equal terms; state and sockets are in
a short directory under /run, as a Unix socket's path must fit in 108 bytes. The CRI
plugin is off (there is no CNI here); `ctr` talks to the private socket.
cowstore's snapshotter is the real command (`cowstore snapshotter serve`), one process
on an overlay2 store of its own, named in the config as `[proxy_plugins.cowstore-overlay2]`:
containerd calls it over gRPC exactly as it would in production.

The test image is the bench's busybox layer (`images.py`) wrapped as a `docker save`
archive, which `ctr images import` unpacks into whichever snapshotter it is given.

Stopping undoes everything, whatever state the start reached: containerd, then the
shims it left (they outlive it by design, and are re-parented to the bench, which reaps
them), the mounts below its directories, the snapshotter server, then the store's own
mounts and helpers.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time

import grpc
from google.protobuf import empty_pb2

from cowstore.app.bench.cli_peer import last_line, short_run_dir
from cowstore.app.bench.reaper import Subreaper
from cowstore.errors import CowstoreError, Unavailable
from cowstore.host import fsutil, mounts
from cowstore.snapshotter.api import snapshots_pb2 as pb
from cowstore.snapshotter.service import NAMESPACE_HEADER, SERVICE

TOOLS = ("containerd", "ctr", "runc", "containerd-shim-runc-v2")
IMAGE = "docker.io/cowstore-bench/busybox:latest"
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0
_SBIN = ":/usr/sbin:/sbin"  # runc lives in /usr/sbin, often not on a root shell's PATH


class ContainerdError(Unavailable):
    """containerd, `ctr` or the snapshotter server failed."""


def missing_tools() -> str | None:
    """Why containerd cannot run here (a tool absent, not root), or None."""
    path = os.environ.get("PATH", "") + _SBIN
    missing = [tool for tool in TOOLS if shutil.which(tool, path=path) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install containerd runc)"
    if os.geteuid() != 0:
        return "containerd needs root"
    return None


def docker_archive(layer: pathlib.Path, target: pathlib.Path, tag: str) -> pathlib.Path:
    """A `docker save` archive at `target` of a one-layer image made of the layer tar `layer`."""
    diff_id = hashlib.sha256(layer.read_bytes()).hexdigest()
    config = json.dumps(
        {
            "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine),
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": [f"{diff_id}/layer.tar"]}]).encode()
    with tarfile.open(target, "w") as tar:
        for name, data in ((config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, fileobj=io.BytesIO(data))
        tar.add(layer, arcname=f"{diff_id}/layer.tar")
    return target


def _answers(path: pathlib.Path) -> bool:
    """Whether something listens on the Unix socket `path` (a dead server leaves the file)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after a grace period; reaped either way."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class SnapshotterServer:
    """`cowstore snapshotter serve` on an overlay2 store at `root`, listening on `socket`."""

    def __init__(self, root: pathlib.Path, socket_path: pathlib.Path, driver: str = "overlay2") -> None:
        self.root = root
        self.driver = driver
        self.socket = socket_path
        self.log = root.with_name(root.name + ".log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SnapshotterServer:
        command = [sys.executable, "-m", "cowstore.cli", "--root", str(self.root), "--driver", self.driver]
        command += ["snapshotter", "serve", "--address", str(self.socket)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + _START_TIMEOUT
        while not _answers(self.socket):
            if self.process.poll() is not None or time.monotonic() > deadline:
                reason = last_line(self.log.read_text(errors="replace")) or "no output"
                raise ContainerdError(f"cowstore snapshotter serve did not come up: {reason}")
            time.sleep(0.05)
        return self

    def close(self) -> None:
        """Stop the server, then whatever its store's driver still has mounted or running."""
        try:
            _stop(self.process)
        finally:
            if self.root.exists():
                from cowstore.store import Store

                with contextlib.suppress(CowstoreError, OSError):
                    Store(self.root, self.driver).shutdown()


class SnapshotsClient:
    """The Snapshots service's calls the bench makes, straight to a snapshotter's socket."""

    def __init__(self, socket_path: pathlib.Path, namespace: str = "cowstore-bench") -> None:
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self.metadata = [(NAMESPACE_HEADER, namespace)]
        self._calls: dict[str, grpc.UnaryUnaryMultiCallable] = {}

    def _call(self, method: str, request: object, response: type) -> object:
        rpc = self._calls.get(method)
        if rpc is None:
            rpc = self._calls[method] = self.channel.unary_unary(
                f"/{SERVICE}/{method}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response.FromString,  # type: ignore[attr-defined]
            )
        return rpc(request, metadata=self.metadata, timeout=120)

    def prepare(self, key: str, parent: str = "") -> None:
        self._call("Prepare", pb.PrepareSnapshotRequest(key=key, parent=parent), pb.PrepareSnapshotResponse)

    def mounts(self, key: str) -> None:
        self._call("Mounts", pb.MountsRequest(key=key), pb.MountsResponse)

    def commit(self, name: str, key: str) -> None:
        self._call("Commit", pb.CommitSnapshotRequest(name=name, key=key), empty_pb2.Empty)

    def remove(self, key: str) -> None:
        self._call("Remove", pb.RemoveSnapshotRequest(key=key), empty_pb2.Empty)

    def close(self) -> None:
        self.channel.close()


class PrivateContainerd:
    """containerd in `base` with cowstore's overlay2 snapshotter as proxy plugin `cowstore-overlay2`."""

    PROXY = "cowstore-overlay2"

    def __init__(self, base: pathlib.Path) -> None:
        self.base = base
        # Socket paths must fit in 108 bytes: keep them under a short directory in /run.
        self.run_dir = short_run_dir("cbc-")
        self.address = self.run_dir / "containerd.sock"
        self.server = SnapshotterServer(base / "cowstore", self.run_dir / "cowstore.sock")
        self.log = base / "containerd.log"
        self.env = dict(os.environ, PATH=os.environ.get("PATH", "") + _SBIN)
        self.process: subprocess.Popen[bytes] | None = None
        self.reaper: Subreaper | None = None

    def config(self) -> str:
        return (
            "version = 2\n"
            f'root = "{self.base / "root"}"\n'
            f'state = "{self.run_dir / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{self.address}"\n'
            "[proxy_plugins]\n"
            f"  [proxy_plugins.{self.PROXY}]\n"
            '    type = "snapshot"\n'
            f'    address = "{self.server.socket}"\n'
        )

    def start(self) -> PrivateContainerd:
        """Start the snapshotter server and containerd; on any failure, undo what started."""
        try:
            self.reaper = Subreaper()
            self.server.start()
            config = self.base / "config.toml"
            config.write_text(self.config())
            with open(self.log, "ab") as log:
                # Its own session: a Ctrl-C on the terminal reaches the bench, which stops it in order.
                self.process = subprocess.Popen(
                    ["containerd", "--config", str(config)],
                    stdout=log,
                    stderr=log,
                    stdin=subprocess.DEVNULL,
                    env=self.env,
                    start_new_session=True,
                )
            deadline = time.monotonic() + _START_TIMEOUT
            while self._ctr("version").returncode != 0:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    reason = last_line(self.log.read_text(errors="replace")) or "no output"
                    raise ContainerdError(f"containerd did not start: {reason}")
                time.sleep(0.1)
        except BaseException:
            self.close()
            raise
        return self

    def _ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.address), *args],
            capture_output=True,
            text=True,
            env=self.env,
            stdin=subprocess.DEVNULL,
            timeout=300,
            check=False,
        )

    def ctr(self, *args: str) -> str:
        """One `ctr` command against this containerd; its stdout (ContainerdError when it fails)."""
        done = self._ctr(*args)
        if self.reaper is not None:
            self.reaper.reap()
        if done.returncode != 0:
            raise ContainerdError(f"ctr {args[0]} failed: {last_line(done.stderr or done.stdout) or done.returncode}")
        return done.stdout

    def close(self) -> None:
        """Stop containerd, end its shims, undo every mount it made, stop the snapshotter; never raises."""
        try:
            _stop(self.process)
            if self.reaper is not None:
                self.reaper.end(lambda cmd: str(self.address) in cmd or str(self.base) in cmd)
        finally:
            try:
                for root in (self.run_dir, self.base):
                    with contextlib.suppress(CowstoreError):
                        mounts.unmount_all(root)
                self.server.close()
            finally:
                if self.reaper is not None:
                    self.reaper.close()
                    self.reaper = None
                fsutil.remove_tree(self.run_dir)
