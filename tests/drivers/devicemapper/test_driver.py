"""devicemapper driver specifics: Docker's layout, names, status, transactions, dump."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from cowstore.drivers import open_driver
from cowstore.errors import NotSupported
from cowstore.store import warnings
from cowstore.units import human_size

OPTIONS = {
    "dm.loopdatasize": "1G",
    "dm.loopmetadatasize": "64M",
    "dm.basesize": "256M",
    "dm.fs": "ext4",
    "dm.server_cgroup": "",
}


@pytest.fixture
def driver(tmp_path):
    try:
        drv = open_driver("devicemapper", tmp_path / "devicemapper", OPTIONS)
    except NotSupported as exc:
        pytest.skip(str(exc))
    try:
        yield drv
    finally:
        drv.cleanup()


def test_layout_names_and_metadata(driver):
    home = driver.home
    assert (home / "devicemapper" / "data").stat().st_size == 1 << 30
    assert (home / "devicemapper" / "metadata").stat().st_size == 64 << 20
    base = json.loads((home / "metadata" / "base").read_text())
    assert base["initialized"] is True and base["size"] == 256 << 20
    assert json.loads((home / "metadata" / "deviceset-metadata").read_text())["BaseDeviceFilesystem"] == "ext4"
    driver.create("img", None)
    root = driver.get("img")
    try:
        assert root == home / "mnt" / "img" / "rootfs"
        (root / "f").write_text("x")
        assert not (home / "mnt" / "img" / "id").exists()  # Docker writes one per mount; the compact layout does not
    finally:
        driver.put("img")
    meta = driver.metadata("img")
    assert meta["DeviceName"].startswith("cowstore-") and meta["DeviceName"].endswith("-img")
    info = json.loads((home / "metadata" / "img").read_text())
    assert info["device_id"] == int(meta["DeviceId"]) and info["initialized"] is True
    assert not (home / "metadata" / "transaction-metadata").exists()
    driver.remove("img")
    assert not driver.exists("img")
    driver.remove("img")  # unknown id: success, like Docker


def test_status_fields(driver):
    keys = [key for key, _ in driver.status()]
    for key in (
        "Pool Name",
        "Pool Blocksize",
        "Base Device Size",
        "Backing Filesystem",
        "Data file",
        "Metadata file",
        "Data Space Used",
        "Data Space Total",
        "Data Space Available",
        "Metadata Space Used",
        "Metadata Space Total",
        "Metadata Space Available",
        "Thin Pool Minimum Free Space",
        "Deferred Removal Enabled",
        "Data loop file",
    ):
        assert key in keys
    status = dict(driver.status())
    assert status["Pool Blocksize"] == "65.54kB"
    assert status["Base Device Size"] == "268.4MB"
    assert status["Data Space Total"] == "1.074GB"
    assert any("loopback" in warning for warning in warnings(driver.name, driver.status()))


def test_pool_usage_is_status_unrounded_and_counts_written_blocks(driver):
    before = driver.pool_usage()
    assert before.block_size == 64 * 1024 and before.data_total == 1 << 30
    assert 0 < before.metadata_used <= before.metadata_total
    driver.create("img", None)
    root = driver.get("img")
    try:
        with open(root / "f", "wb") as fh:
            fh.write(os.urandom(1 << 20))
            os.fsync(fh.fileno())
    finally:
        driver.put("img")
    after = driver.pool_usage()
    assert after.data_used - before.data_used >= 1 << 20
    assert dict(driver.status())["Data Space Used"] == human_size(after.data_used)


def test_rollback_of_unfinished_transaction(driver, tmp_path):
    driver.create("a", None)
    device_id = json.loads((driver.home / "metadata" / "a").read_text())["device_id"]
    current = driver.client.call("status")["transaction_id"]
    (driver.home / "metadata" / "transaction-metadata").write_text(
        json.dumps({"open_transaction_id": current + 1, "device_hash": "a", "device_id": device_id})
    )
    driver.devices.rollback()
    assert not driver.exists("a")
    assert device_id not in [d["id"] for d in driver.client.call("list")]


@pytest.mark.skipif(shutil.which("thin_check") is None, reason="thin-provisioning-tools not installed")
def test_dump_passes_thin_check(driver, tmp_path):
    driver.create("a", None)
    driver.create_rw("b", "a")
    xml = tmp_path / "pool.xml"
    xml.write_text(driver.dump())
    meta = tmp_path / "tmeta"
    meta.write_bytes(b"")
    subprocess.run(["truncate", "-s", "16M", str(meta)], check=True)
    subprocess.run(["thin_restore", "-i", str(xml), "-o", str(meta)], check=True, capture_output=True)
    subprocess.run(["thin_check", str(meta)], check=True, capture_output=True)
    assert len(driver.list_devices()) == 3


@pytest.fixture
def loop_devices(tmp_path):
    """Two loop block devices (data 512 MiB, metadata 32 MiB), detached at the end."""
    devices: list[str] = []
    try:
        for name, size in (("data", 512 << 20), ("metadata", 32 << 20)):
            backing = tmp_path / f"{name}-backing"
            with open(backing, "wb") as fh:
                fh.truncate(size)
            devices.append(
                subprocess.run(
                    ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=True
                ).stdout.strip()
            )
        yield devices
    finally:
        for device in devices:
            subprocess.run(["losetup", "--detach", device], check=False)


def test_pool_on_block_devices(tmp_path, loop_devices):
    """dm.datadev / dm.metadatadev: the pool on block devices instead of loop files."""
    data, metadata = loop_devices
    options = {"dm.datadev": data, "dm.metadatadev": metadata, "dm.basesize": "64M", "dm.server_cgroup": ""}
    try:
        driver = open_driver("devicemapper", tmp_path / "devicemapper", options)
    except NotSupported as exc:
        pytest.skip(str(exc))
    try:
        assert not (driver.home / "devicemapper" / "data").exists()
        driver.create("img", None)
        root = driver.get("img")
        try:
            (root / "f").write_bytes(b"image" * 50_000)
        finally:
            driver.put("img")
        driver.create_rw("ctr", "img")
        root = driver.get("ctr")
        try:
            with open(root / "f", "r+b") as fh:  # a small write into a shared block: copy on write
                fh.write(b"CTR")
        finally:
            driver.put("ctr")
        root = driver.get("img")
        try:
            assert (root / "f").read_bytes()[:5] == b"image"
        finally:
            driver.put("img")
        status = dict(driver.status())
        assert status["Data file"] == data and status["Metadata file"] == metadata
        driver.remove("ctr")
        driver.remove("img")
    finally:
        driver.cleanup()
