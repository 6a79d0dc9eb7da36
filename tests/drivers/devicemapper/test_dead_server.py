"""A block server killed while layers are mounted: the next get or put notices and mounts afresh."""

from __future__ import annotations

import os
import signal
import time

import pytest

from cowstore.host import loop, mounts, service

from ...support.drivers import open_or_skip

DATA = os.urandom(300_000)


@pytest.fixture
def driver(tmp_path):
    drv = open_or_skip("devicemapper", tmp_path / "devicemapper")
    try:
        yield drv
    finally:
        try:
            drv.cleanup()
        finally:
            mounts.unmount_all(tmp_path)
            for device in loop.attached_below(tmp_path):
                loop.detach_device(device)


def _kill(driver) -> int:
    pid = driver.client.call("status")["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while service.running(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return pid


def _write_synced(path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def test_get_and_put_re_establish_mounts_of_a_killed_server(driver):
    driver.create("img", None)
    for id in ("ctr", "other"):
        driver.create_rw(id, "img")
        _write_synced(driver.get(id) / "f", DATA + id.encode())
    driver.get("ctr")  # two users of ctr
    old = _kill(driver)
    assert driver.stale_mounts() == ["ctr", "other"]

    path = driver.get("ctr")  # notices, restarts the server, mounts afresh: three users
    assert (path / "f").read_bytes() == DATA + b"ctr"
    assert driver.client.call("status")["pid"] != old
    assert driver.stale_mounts() == ["other"]
    (path / "g").write_bytes(b"after")
    for _ in range(2):
        driver.put("ctr")
        assert mounts.is_mountpoint(path.parent)
    driver.put("ctr")
    assert not mounts.is_mountpoint(path.parent)

    driver.clear_stale_mount("other")  # what `check --repair` does
    assert driver.stale_mounts() == []
    assert not mounts.is_mountpoint(driver.home / "mnt" / "other")
    path = driver.get("other")
    try:
        assert (path / "f").read_bytes() == DATA + b"other"
    finally:
        driver.put("other")


@pytest.mark.parametrize("users", [1, 2])
def test_put_after_a_kill_releases_or_re_establishes(driver, users):
    driver.create("img", None)
    driver.create_rw("ctr", "img")
    for _ in range(users):
        path = driver.get("ctr")
    _write_synced(path / "f", DATA)
    _kill(driver)
    driver.put("ctr")
    assert mounts.is_mountpoint(path.parent) == (users > 1)
    assert driver.stale_mounts() == []
    path = driver.get("ctr")
    try:
        assert (path / "f").read_bytes() == DATA
    finally:
        for _ in range(users):
            driver.put("ctr")
    assert not mounts.is_mountpoint(path.parent)
    assert loop.attached_below(driver.home) == []
