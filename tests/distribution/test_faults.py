"""Pulls and pushes through a fault-injecting proxy: they retry and complete, or fail cleanly."""

from __future__ import annotations

import os
import pathlib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from cowstore.distribution import Puller, Pusher, tidy
from cowstore.distribution.blobstore import BlobStore
from cowstore.distribution.errors import RegistryUnavailable, TooManyRequests
from cowstore.distribution.records import DistributionRecords
from cowstore.images import Image
from cowstore.metadata.db import open_read_only
from cowstore.store import Store
from tests.distribution.conftest import settings
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.registry import RegistryServer


@pytest.fixture
def proxy(plain_registry: RegistryServer) -> Iterator[FaultProxy]:
    server = FaultProxy(plain_registry.host)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pushed(store: Store, demo: Image, plain_registry: RegistryServer) -> str:
    """The demo image in the registry; returns the repository path."""
    Pusher(store, settings()).push("busybox-demo:latest", f"{plain_registry.host}/faults/demo:1")
    return "faults/demo"


def _clean(store: Store) -> None:
    assert store.check() == []
    assert store.images.images() == [] and store.layers.layers() == []
    blobs = BlobStore(store.root, DistributionRecords(store.layers.db))
    assert list(blobs.ingest_dir.iterdir()) == [] and list(blobs.blobs.iterdir()) == []


def test_pull_resumes_after_dropped_connections_and_retries_errors(
    other_store: Store, demo: Image, pushed: str, proxy: FaultProxy
) -> None:
    proxy.faults = [
        Fault("GET", "/blobs/sha256:", "drop", times=2),
        Fault("GET", "/manifests/", "status", status=500),
        Fault("GET", "/blobs/sha256:", "status", status=429),
        Fault("GET", "/blobs/sha256:", "reset"),
    ]
    [pulled] = Puller(other_store, settings()).pull(f"{proxy.host}/{pushed}:1")
    assert pulled.image.id == demo.id
    assert all(f.times == 0 for f in proxy.faults), proxy.fired
    ranged = [path for method, path, _ in proxy.seen if method == "GET" and "/blobs/" in path]
    assert len(ranged) > len(demo.diff_ids) + 1  # the dropped blobs were asked for again
    assert other_store.check() == []


def test_a_registry_that_keeps_dropping_fails_the_pull_cleanly(
    other_store: Store, pushed: str, proxy: FaultProxy
) -> None:
    proxy.faults = [Fault("GET", "/blobs/sha256:", "drop", times=1000)]
    with pytest.raises(RegistryUnavailable, match="kept failing"):
        Puller(other_store, settings()).pull(f"{proxy.host}/{pushed}:1")
    _clean(other_store)


def test_endless_rate_limiting_is_reported(other_store: Store, pushed: str, proxy: FaultProxy) -> None:
    proxy.faults = [Fault("GET", "/manifests/", "status", status=429, times=1000)]
    with pytest.raises(TooManyRequests, match="rate-limiting"):
        Puller(other_store, settings()).pull(f"{proxy.host}/{pushed}:1")
    _clean(other_store)


def test_a_corrupt_blob_never_becomes_a_layer(
    other_store: Store, pushed: str, proxy: FaultProxy, plain_registry: RegistryServer
) -> None:
    """The registry's stored blob is damaged on disk: the digest check refuses it."""
    blobs = plain_registry.root / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256"
    biggest = max((p for p in blobs.rglob("data")), key=lambda p: p.stat().st_size)
    original = biggest.read_bytes()
    try:
        biggest.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(Exception) as caught:
            Puller(other_store, settings()).pull(f"{proxy.host}/{pushed}:1")
        assert type(caught.value).__name__ in ("BlobCorrupt", "BadImageArchive", "DigestMismatch")
        _clean(other_store)
    finally:
        biggest.write_bytes(original)


def test_chunked_upload_resumes_after_an_interruption(store: Store, demo: Image, proxy: FaultProxy) -> None:
    proxy.faults = [Fault("PATCH", "/blobs/uploads/", "reset"), Fault("PATCH", "/blobs/uploads/", "status", status=503)]
    small = settings(monolithic_max=1024, chunk_size=64 * 1024)
    pushed = Pusher(store, small).push("busybox-demo:latest", f"{proxy.host}/faults/chunked:1")
    patches = [path for method, path, _ in proxy.seen if method == "PATCH"]
    assert len(patches) > 3 and all(f.times == 0 for f in proxy.faults)
    again = Pusher(store, settings()).push("busybox-demo:latest", f"{proxy.host}/faults/chunked:2")
    assert again.digest == pushed.digest


def test_a_killed_pull_leaves_nothing_registered(
    store: Store, demo: Image, pushed: str, proxy: FaultProxy, tmp_path: pathlib.Path
) -> None:
    """SIGKILL while the top layer's blob is half downloaded and the one below is stored."""
    root = tmp_path / "killed"
    top = store.layers.get(demo.top_layer)
    [blob] = DistributionRecords(store.layers.db).blobs_for(top.diff_id)
    proxy.faults = [Fault("GET", f"/blobs/{blob.digest}", "stall", times=1000)]
    command = [sys.executable, "-m", "cowstore.cli", "--root", str(root), "--driver", "vfs", "--no-sync", "pull"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([*command, f"{proxy.host}/{pushed}:1"], env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not proxy.fired and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.fired, "the pull never reached the top layer's blob"
        deadline = time.monotonic() + 30
        while not _layer_rows(root) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _layer_rows(root), "the bottom layer was not stored before the kill"
    finally:
        child.kill()
        child.wait(30)
    reopened = Store(root, "vfs", sync=False)
    try:
        tidy(reopened)
        _clean(reopened)
    finally:
        reopened.shutdown()


def _layer_rows(root: pathlib.Path) -> int:
    """Layer rows in the killed store's database, read without opening (and so repairing) it."""
    if not (root / "cowstore.db").exists():
        return 0
    conn = open_read_only(root / "cowstore.db")
    try:
        return len(conn.execute("SELECT chain_id FROM layers WHERE state = 'ready'").fetchall())
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()
