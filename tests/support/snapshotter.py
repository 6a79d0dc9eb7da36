"""The snapshotter tests' shared pieces: a `cowstore snapshotter serve` process and a client.

The server runs as the real command (`python -m cowstore.cli ... snapshotter serve`) on
a store root of the test's own, with the options support.drivers gives each driver on
this host; stopping it sends SIGTERM and then shuts the store down, which stops the
helper servers (union, block) its driver started and unmounts what it mounted.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping

import grpc
from google.protobuf import empty_pb2

from cowstore.errors import NotSupported
from cowstore.snapshotter.api import snapshots_pb2 as pb
from cowstore.store import Store

from .drivers import HOST_OPTIONS

SERVICE = "/containerd.services.snapshots.v1.Snapshots/"
SRC = pathlib.Path(__file__).resolve().parents[2] / "src"


def store_args(root: pathlib.Path, driver: str) -> list[str]:
    """Global CLI options that open `root` with `driver` as the tests open it."""
    args = ["--root", str(root), "--driver", driver]
    for key, value in HOST_OPTIONS.get(driver, {}).items():
        args += ["--storage-opt", f"{key}={value}"]
    return args


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    env.update(extra or {})
    return env


class ServerProcess:
    """`cowstore snapshotter serve` for one store root, on `<root>.sock`."""

    def __init__(self, root: pathlib.Path, driver: str, *, env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.driver = driver
        self.socket = root.with_name(root.name + ".sock")
        self.log = root.with_name(root.name + ".log")
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> ServerProcess:
        command = [sys.executable, "-m", "cowstore.cli", *store_args(self.root, self.driver)]
        command += ["snapshotter", "serve", "--address", str(self.socket)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=log, env=cli_env(self.env))
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None:
                return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"snapshotter did not come up: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        """Whether something listens on the socket (a killed server leaves the file behind)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        """SIGTERM and wait; None when it had already exited (its code is then in `proc`)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def release(self) -> None:
        """Stop the server, then everything the store's driver keeps running or mounted."""
        self.stop()
        if self.root.exists():
            with contextlib.suppress(NotSupported):
                Store(self.root, self.driver, HOST_OPTIONS.get(self.driver)).shutdown()

    def client(self, namespace: str | None = "default") -> Client:
        return Client(self.socket, namespace)


class Client:
    """The Snapshots service by method name, with the namespace as containerd sends it."""

    def __init__(self, socket: pathlib.Path, namespace: str | None) -> None:
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.namespace = namespace

    def close(self) -> None:
        self.channel.close()

    def _metadata(self) -> list[tuple[str, str]]:
        return [("containerd-namespace", self.namespace)] if self.namespace is not None else []

    def call(self, method: str, request: object, response: type) -> object:
        rpc = self.channel.unary_unary(
            SERVICE + method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response.FromString,
        )
        return rpc(request, metadata=self._metadata(), timeout=120)

    def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> pb.PrepareSnapshotResponse:
        request = pb.PrepareSnapshotRequest(key=key, parent=parent, labels=labels or {})
        return self.call("Prepare", request, pb.PrepareSnapshotResponse)

    def view(self, key: str, parent: str = "") -> pb.ViewSnapshotResponse:
        return self.call("View", pb.ViewSnapshotRequest(key=key, parent=parent), pb.ViewSnapshotResponse)

    def mounts(self, key: str) -> pb.MountsResponse:
        return self.call("Mounts", pb.MountsRequest(key=key), pb.MountsResponse)

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        self.call("Commit", pb.CommitSnapshotRequest(name=name, key=key, labels=labels or {}), empty_pb2.Empty)

    def remove(self, key: str) -> None:
        self.call("Remove", pb.RemoveSnapshotRequest(key=key), empty_pb2.Empty)

    def stat(self, key: str) -> pb.Info:
        return self.call("Stat", pb.StatSnapshotRequest(key=key), pb.StatSnapshotResponse).info

    def update(self, info: pb.Info, *paths: str) -> pb.Info:
        request = pb.UpdateSnapshotRequest(info=info)
        request.update_mask.paths.extend(paths)
        return self.call("Update", request, pb.UpdateSnapshotResponse).info

    def usage(self, key: str) -> pb.UsageResponse:
        return self.call("Usage", pb.UsageRequest(key=key), pb.UsageResponse)

    def cleanup(self) -> None:
        self.call("Cleanup", pb.CleanupRequest(), empty_pb2.Empty)

    def list(self, *filters: str) -> list[pb.Info]:
        rpc = self.channel.unary_stream(
            SERVICE + "List",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.ListSnapshotsResponse.FromString,
        )
        stream = rpc(pb.ListSnapshotsRequest(filters=list(filters)), metadata=self._metadata(), timeout=120)
        return [info for batch in stream for info in batch.info]
