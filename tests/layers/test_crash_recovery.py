"""Kill a process at every named point of every mutation; the store must recover.

After each SIGKILL the store is reopened: `check` must find nothing left to repair, and
every layer that was stored before the kill must still give back its exact tar.
"""

from __future__ import annotations

import io
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from cowstore.digest import random_id
from cowstore.drivers import open_driver
from cowstore.errors import NotSupported
from cowstore.layers import LayerStore
from cowstore.layers.faults import FAULT_POINTS
from cowstore.layers.lock import OperationLock

from ..support.tars import layer_tar

BASE = layer_tar({"etc/os-release": (b"ID=cowstore", 0o644)}, ("etc",))
EXTRA = layer_tar({"extra": (b"extra layer", 0o644)})
NEW = layer_tar({"new": (b"new layer", 0o644)})

WORKER = """
import io, os, sys
from cowstore.drivers import open_driver
from cowstore.layers import LayerStore
root, driver, point, base, extra = sys.argv[1:6]
store = LayerStore(root, open_driver(driver, os.path.join(root, driver)))
op = point.split(":")[0]
if op == "register":
    store.register(io.BytesIO(sys.stdin.buffer.read()), base)
elif op == "release":
    store.release(extra)
elif op == "create-rw":
    store.create_rw("new", base, init=lambda p: (p / ".cowstoreenv").touch())
elif op == "remove-rw":
    store.remove_rw("c")
"""


def open_store(root: pathlib.Path, driver: str) -> LayerStore:
    return LayerStore(root, open_driver(driver, root / driver))


LAYER_STORE_POINTS = [p for p in FAULT_POINTS if p.split(":")[0] in ("register", "release", "create-rw", "remove-rw")]


@pytest.mark.parametrize("driver", ["vfs", "overlay2"])
@pytest.mark.parametrize("point", LAYER_STORE_POINTS)
def test_kill_at_fault_point(tmp_path: pathlib.Path, driver: str, point: str) -> None:
    try:
        store = open_store(tmp_path, driver)
    except NotSupported as exc:
        pytest.skip(str(exc))
    base = store.register(io.BytesIO(BASE))
    extra = store.register(io.BytesIO(EXTRA), base.chain_id)
    store.create_rw("c", base.chain_id, init=lambda p: (p / ".cowstoreenv").touch())
    store.close()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", WORKER, str(tmp_path), driver, point, base.chain_id, extra.chain_id],
            input=NEW,
            env={**os.environ, "COWSTORE_FAULT": point, "PYTHONPATH": os.pathsep.join(sys.path)},
            capture_output=True,
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
        store = open_store(tmp_path, driver)
        assert store.check(verify_content=True) == []
        assert store.tar_stream(base.chain_id).read() == BASE
        if point.startswith("release"):
            assert extra.chain_id not in {layer.chain_id for layer in store.layers()}
        else:
            assert store.tar_stream(extra.chain_id).read() == EXTRA
        names = {rw.name for rw in store.rw_layers()}
        assert names == ({"c"} if point != "remove-rw:after-mark" else set())
        # the store still works: redo the operation that was killed
        layer = store.register(io.BytesIO(NEW), base.chain_id)
        assert store.tar_stream(layer.chain_id).read() == NEW
    finally:
        store.driver.cleanup()
        store.close()


def test_check_finds_and_repairs_orphans_and_refcounts(tmp_path: pathlib.Path) -> None:
    store = open_store(tmp_path, "vfs")
    try:
        layer = store.register(io.BytesIO(BASE))
        store.driver.create("0123456789abcdef-orphan", None)
        store.create_rw("c", layer.chain_id)
        store.driver.remove(store.get_rw("c").mount_id)
        problems = store.check(expected_refs={layer.chain_id: 2})
        kinds = sorted(p.kind for p in problems)
        assert kinds == ["missing-storage", "orphan-storage", "refcount"]
        assert not any(p.repaired for p in problems)
        repaired = store.check(repair=True, expected_refs={layer.chain_id: 2})
        assert all(p.repaired for p in repaired)
        assert store.check(expected_refs={layer.chain_id: 2}) == []
        assert store.get(layer.chain_id).refcount == 2
        assert store.rw_layers() == []
    finally:
        store.close()


def test_check_detects_tampered_content(tmp_path: pathlib.Path) -> None:
    store = open_store(tmp_path, "vfs")
    try:
        layer = store.register(io.BytesIO(BASE))
        (store.driver.get(layer.cache_id) / "etc" / "os-release").write_bytes(b"ID=evil!!!!")
        problems = store.check(verify_content=True)
        assert [p.kind for p in problems] == ["corrupt"]
    finally:
        store.close()


CLI_CASES = [
    ("load", "import:after-layer"),
    ("load", "register:after-apply"),
    ("commit", "commit:after-register"),
    ("commit", "register:after-insert"),
    ("create", "create-rw:after-init"),
    ("rm", "remove-rw:after-mark"),
    ("rmi", "release:after-mark"),
]


@pytest.mark.parametrize("command,point", CLI_CASES)
def test_kill_cli_operations(tmp_path: pathlib.Path, command: str, point: str) -> None:
    """SIGKILL in the middle of `cowstore load/commit/create/rm/rmi`; `cowstore check` must pass after."""
    from cowstore.app.demo import build_image_archive

    root = tmp_path / "root"
    archive = tmp_path / "image.tar"
    archive.write_bytes(build_image_archive())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def cowstore(*args: str, fault: str | None = None) -> subprocess.CompletedProcess:
        extra = {"COWSTORE_FAULT": fault} if fault else {}
        return subprocess.run(
            [sys.executable, "-m", "cowstore", "--root", str(root), "--driver", "vfs", *args],
            env={**env, **extra},
            capture_output=True,
        )

    assert cowstore("load", "-i", str(archive)).returncode == 0
    assert cowstore("create", "--name", "base", "busybox-demo").returncode == 0
    setup = {
        "load": ["load", "-i", str(archive)],
        "commit": ["commit", "base", "committed:1"],
        "create": ["create", "--name", "second", "busybox-demo"],
        "rm": ["rm", "base"],
        "rmi": ["rmi", "-f", "busybox-demo"],
    }
    if command == "load":
        assert cowstore("rmi", "-f", "busybox-demo").returncode == 0
        assert cowstore("rm", "base").returncode == 0
    if command == "commit":
        mount = cowstore("mount", "base").stdout.decode().strip()
        pathlib.Path(mount, "new-file").write_text("changed")
        assert cowstore("umount", "base").returncode == 0
    if command == "rmi":
        assert cowstore("rm", "base").returncode == 0
    killed = cowstore(*setup[command], fault=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    check = cowstore("check", "--verify")
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    if command in ("rm", "rmi"):
        # the removal had passed its point of no return: recovery finished it
        listing = cowstore("ps" if command == "rm" else "images").stdout.decode()
        assert ("base" if command == "rm" else "busybox-demo") not in listing
    else:
        redo = cowstore(*setup[command])
        assert redo.returncode == 0, redo.stderr.decode()
    assert cowstore("check", "--verify").returncode == 0


@pytest.mark.parametrize("driver", ["vfs", "overlay2"])
def test_open_removes_storage_that_a_dead_marker_names_and_no_record(tmp_path: pathlib.Path, driver: str) -> None:
    """A power loss may keep a container layer's storage and lose its record, which was not
    durable (LayerStore.create_rw): the operation's marker, linked before the storage,
    makes the next opener remove it, `<id>-init` included; what records name stays."""
    try:
        store = open_store(tmp_path, driver)
    except NotSupported as exc:
        pytest.skip(str(exc))
    try:
        base = store.register(io.BytesIO(BASE))
        store.create_rw("c", base.chain_id, init=lambda p: (p / ".cowstoreenv").touch())
        lost = random_id()
        marker = OperationLock(store.tmp, lost)
        store.driver.create_rw(f"{lost}-init", base.cache_id)
        store.driver.create_rw(lost, f"{lost}-init")
        marker.leave()  # the process is gone: its marker stays, unlocked
    finally:
        store.driver.cleanup()
        store.close()
    store = open_store(tmp_path, driver)
    try:
        assert not store.driver.exists(lost) and not store.driver.exists(f"{lost}-init")
        assert not (store.tmp / f"{lost}.op").exists()
        assert [rw.name for rw in store.rw_layers()] == ["c"]
        assert store.driver.exists(store.get_rw("c").mount_id)
        assert store.check(verify_content=True) == []
    finally:
        store.driver.cleanup()
        store.close()


def test_recovery_collects_a_layer_whose_finished_marker_survived(tmp_path: pathlib.Path) -> None:
    """A power loss kept the marker of a finished register (its unlink was lost) and of the
    lease that held the layer: releasing the lease collects the layer under the same id."""
    store = open_store(tmp_path, "vfs")
    try:
        lease = OperationLock(store.tmp, "lease-dead")
        layer = store.register(io.BytesIO(BASE), lease="lease-dead")
        OperationLock(store.tmp, layer.cache_id).leave()
        lease.leave()
    finally:
        store.close()
    store = open_store(tmp_path, "vfs")
    try:
        assert store.layers() == []
        assert not store.driver.exists(layer.cache_id)
        assert list(store.tmp.glob("*.op")) == []
        assert store.check() == []
    finally:
        store.close()
