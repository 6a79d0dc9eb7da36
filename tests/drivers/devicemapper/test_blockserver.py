"""Thin devices as real block devices: the block server's FUSE file + a direct-I/O loop device + ext4."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import pathlib
import shutil
import subprocess
import threading

import pytest

from cowstore.drivers.devicemapper import server as pool_server
from cowstore.drivers.devicemapper.server.devicefs import DeviceFS, Devices
from cowstore.drivers.devicemapper.server.watchdog import Watchdog
from cowstore.drivers.devicemapper.thinpool import ThinPool
from cowstore.host import loop
from cowstore.host.fuse import Context
from cowstore.host.mounts import mount, umount

from .thinpool.conftest import make_files

MiB = 1024 * 1024
CTX = Context(0, 0, 0)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices and mounts"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
    pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="no mkfs.ext4"),
]


@pytest.fixture
def server(tmp_path: pathlib.Path):
    data, meta = tmp_path / "data", tmp_path / "metadata"
    data.write_bytes(b"")
    os.truncate(data, 512 * MiB)
    meta.write_bytes(b"")
    os.truncate(meta, 16 * MiB)
    mnt = tmp_path / "devices"
    client = pool_server.start_server(
        metadata=meta, data=data, mountpoint=mnt, socket=tmp_path / "ctl", log=tmp_path / "server.log", min_free_pct=0
    )
    try:
        yield client, mnt, data
    finally:
        pool_server.stop_server(client, mnt)


@pytest.fixture
def attached(server, tmp_path: pathlib.Path):
    """Activate, attach and mount devices; undo everything at the end."""
    client, mnt, _ = server
    undo: list = []

    def attach(dev_id: int, mkfs: bool = False) -> pathlib.Path:
        name = f"thin-{dev_id}"
        path = client.call("activate", id=dev_id, name=name)
        undo.append(lambda: client.call("deactivate", name=name))
        undo.append(lambda: loop.detach(path))
        target = tmp_path / f"mnt-{dev_id}"
        target.mkdir(exist_ok=True)
        with loop.attached(path, direct_io=True) as device:
            if mkfs:
                subprocess.run(["mkfs.ext4", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", device], check=True)
            mount(device, target, "ext4")
        undo.append(lambda: umount(target, 0))
        return target

    try:
        yield attach
    finally:
        for step in reversed(undo):
            step()


def used(client) -> int:
    return client.call("status")["used_data_blocks"]


def test_ext4_write_read_snapshot_and_trim(server, attached):
    client, _, data = server
    client.call("create_thin", id=1, size=256 * MiB)
    fs = attached(1, mkfs=True)
    payload = os.urandom(20 * MiB)
    (fs / "file").write_bytes(payload)
    os.sync()
    before = used(client)
    assert before * 64 * 1024 >= len(payload)
    client.call("create_snap", id=2, origin=1)  # ext4 was synced: a crash-consistent image
    assert used(client) == before  # the snapshot shares every block
    snap = attached(2)
    assert hashlib.sha256((snap / "file").read_bytes()).digest() == hashlib.sha256(payload).digest()
    (snap / "file").write_bytes(b"changed")
    os.sync()
    assert (fs / "file").read_bytes() == payload
    (fs / "file").unlink()
    os.sync()
    subprocess.run(["fstrim", str(fs)], check=True)
    subprocess.run(["fstrim", str(snap)], check=True)  # the snapshot dropped its copy of the file too
    client.call("flush")
    assert used(client) < before  # discards reached the pool and freed unshared blocks
    assert client.call("check") == []


def _memory_cgroup() -> pathlib.Path | None:
    for line in pathlib.Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base = pathlib.Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            return base if (base / "memory.limit_in_bytes").exists() else None
    return None


def test_writer_in_memory_limited_cgroup_does_not_deadlock(server, attached):
    """The server runs outside the writer's cgroup, so writeback under pressure completes."""
    base = _memory_cgroup()
    if base is None:
        pytest.skip("no cgroup v1 memory controller")
    client, _, _ = server
    if not client.call("status")["cgroup"]:
        pytest.skip("the server could not get its own memory cgroup")
    client.call("create_thin", id=1, size=256 * MiB)
    fs = attached(1, mkfs=True)
    group = base / f"cowstore-test-writer-{os.getpid()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(48 * MiB))
        script = f"echo $$ > {group}/cgroup.procs && dd if=/dev/zero of={fs}/big bs=1M count=160 status=none && sync"
        subprocess.run(["sh", "-c", script], check=True, timeout=180)
        assert (fs / "big").stat().st_size == 160 * MiB
    finally:
        group.rmdir()


@pytest.mark.parametrize("offset, expected", [(MiB - 10, 10), (MiB, 0), (MiB + 4096, 0)])
def test_read_replies_end_at_the_device_end(tmp_path, request, offset, expected):
    """A read is answered from the reply buffer, cut at the device's end and empty at or
    past it, like a file's."""
    pool = ThinPool.open(*make_files(tmp_path), min_free_pct=0)
    request.addfinalizer(pool.abandon)
    pool.create_thin(1, MiB)
    pool.write(1, MiB - 10, b"0123456789")
    devices = Devices()
    devices.activate("thin-1", 1)
    node, _ = devices.lookup("thin-1")
    fs = DeviceFS(pool, devices, Watchdog(0, 0))
    reply = memoryview(mmap.mmap(-1, 8192))
    got = fs.read_into(CTX, node, devices.open(node), offset, reply[:4096])
    assert got == expected
    assert bytes(reply[:got]) == b"0123456789"[10 - expected :]


def test_a_name_activated_again_is_a_new_node():
    """A node the kernel still knows never reaches the device a name serves next."""
    devices = Devices()
    devices.activate("thin", 1)
    old, _ = devices.lookup("thin")
    assert devices.open(old) == 1
    assert not devices.deactivate("thin")  # open
    devices.release(old)
    assert devices.deactivate("thin")
    devices.activate("thin", 2)
    new, dev_id = devices.lookup("thin")
    assert (new, dev_id) != (old, 1) and dev_id == 2
    with pytest.raises(OSError) as failed:
        devices.open(old)
    assert failed.value.errno == errno.ENOENT


def test_watchdog_aborts_when_a_request_is_stuck():
    watchdog = Watchdog(1 << 30, 0.2)  # no such connection: the abort itself is a no-op
    checker = threading.Thread(target=watchdog.run, daemon=True)
    with watchdog.request():
        checker.start()
        checker.join(5)
    assert watchdog.aborted and not checker.is_alive()
