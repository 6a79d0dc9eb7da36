"""aufs driver specifics (moby's aufs_test.go, ported) on the FUSE union filesystem."""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

from cowstore.archive.changes import Change
from cowstore.drivers import open_driver
from cowstore.drivers.aufs.unionfs import daemon
from cowstore.drivers.common import transit
from cowstore.drivers.common.refcount import MountRefs
from cowstore.errors import LayerNotFound, MountError, NotSupported
from cowstore.host import fsutil, mounts


@pytest.fixture
def home(tmp_path):
    return tmp_path / "aufs"


@pytest.fixture
def driver(home):
    try:
        drv = open_driver("aufs", home)
    except NotSupported as exc:
        pytest.skip(str(exc))
    try:
        yield drv
    finally:
        drv.cleanup()
        for state_file in (home / "unionfs").glob("*.json"):
            state = daemon.DaemonState.load(state_file)
            if daemon.alive(state):
                os.kill(state.pid, signal.SIGKILL)
        mounts.unmount_all(home)


def _hex(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def test_layout_and_remove(driver, home):
    assert {"diff", "layers", "mnt"} <= set(os.listdir(home))
    driver.create("1", None)
    for sub in ("mnt", "diff", "layers"):
        assert (home / sub / "1").exists()
    driver.remove("1")
    for sub in ("mnt", "diff", "layers"):
        assert os.listdir(home / sub) == []


def test_get_paths_and_mounted(driver, home):
    driver.create("1", None)
    driver.create("2", "1")
    assert driver.get("1") == home / "diff" / "1"
    assert not mounts.is_mountpoint(home / "diff" / "1")
    path = driver.get("2")
    assert path == home / "mnt" / "2"
    assert mounts.fstype_of(path) == daemon.FSTYPE
    driver.remove("2")  # while mounted
    assert not mounts.is_mountpoint(path)
    driver.put("1")


def test_invalid_parent_and_exists(driver):
    with pytest.raises(LayerNotFound):
        driver.create("1", "docker")
    assert not driver.exists("none")
    driver.create("1", None)
    assert driver.exists("1")


def test_status(driver, home):
    driver.create("1", None)
    status = driver.status()
    assert len(status) == 4
    assert status[0] == ("Root Dir", str(home))
    assert status[2] == ("Dirs", "1")


def test_native_changes_and_sizes(driver):
    driver.create("1", None)
    driver.create_rw("2", "1")
    (driver.get("2") / "test.txt").write_text("testline")
    driver.put("2")
    assert driver.changes("2", None) == [Change("/test.txt", "A")]
    driver.create_rw("3", "2")
    (driver.get("3") / "test2.txt").write_text("testline")
    driver.put("3")
    assert driver.changes("3", "2") == [Change("/test2.txt", "A")]
    assert driver.diff_size("3", "2") == len("testline")
    driver.create("4", "3")
    assert driver.diff_size("4", "3") == 0


def test_native_diff_round_trip_with_whiteouts(driver):
    driver.create("base", None)
    root = driver.get("base")
    (root / "keep").write_text("k")
    (root / "gone").write_text("g")
    (root / "dir").mkdir()
    (root / "dir" / "old").write_text("o")
    driver.put("base")
    driver.create_rw("top", "base")
    view = driver.get("top")
    os.unlink(view / "gone")
    for child in (view / "dir").iterdir():
        child.unlink()
    os.rmdir(view / "dir")
    os.mkdir(view / "dir")
    (view / "dir" / "new").write_text("n")
    driver.put("top")
    assert driver.changes("top", "base") == [Change("/dir", "C"), Change("/dir/new", "A"), Change("/gone", "D")]
    with driver.diff("top", "base") as stream:
        data = stream.read()
    driver.create("copy", "base")
    driver.apply_diff("copy", "base", io.BytesIO(data))
    view = driver.get("copy")
    try:
        assert sorted(os.listdir(view)) == ["dir", "keep"]
        assert os.listdir(view / "dir") == ["new"]
    finally:
        driver.put("copy")


def test_metadata_lists_branches_top_first(driver, home):
    driver.create("img", None)
    driver.create_rw("ctr-init", "img")
    driver.create_rw("ctr", "ctr-init")
    driver.get("ctr")
    try:
        meta = driver.metadata("ctr")
        assert meta["Branches"].split(":") == [
            f"{home}/diff/ctr=rw",
            f"{home}/diff/ctr-init=ro+wh",
            f"{home}/diff/img=ro+wh",
        ]
        assert meta["Union"].startswith("fuse")
        assert int(meta["DaemonPid"]) > 0
    finally:
        driver.put("ctr")


def test_126_layers_with_whiteouts(driver):
    """MountMoreThan42Layers: every 10th layer deletes its parent's file: 126 - 12."""
    parent = None
    for i in range(1, 127):
        current = _hex(i)
        driver.create_rw(current, parent)
        root = driver.get(current)
        try:
            (root / current).write_bytes(b"")
            if i % 10 == 0:
                os.unlink(root / parent)
        finally:
            driver.put(current)
        parent = current
    root = driver.get(parent)
    try:
        assert len(os.listdir(root)) == 114
    finally:
        driver.put(parent)


def test_stale_removing_dirs_are_swept_unless_locked(home):
    leftovers = [
        transit.transit_path(home / sub, id, transit.REMOVING)
        for sub in ("diff", "mnt")
        for id in ("123", "456")
    ]
    for path in leftovers:
        path.mkdir(parents=True)
    try:
        with MountRefs(home).locked("456"):  # a live process is still removing 456
            drv = open_driver("aufs", home)
    except NotSupported as exc:
        pytest.skip(str(exc))
    drv.cleanup()
    assert [p.exists() for p in leftovers] == [False, True, False, True]


def test_layer_id_ending_in_removing_survives_a_reopen(driver, home):
    driver.create("x-removing", None)
    open_driver("aufs", home)
    assert driver.exists("x-removing")
    assert (home / "diff" / "x-removing").is_dir()


def _log_holders(log: pathlib.Path) -> list[int]:
    """Processes whose stderr is `log`: the daemons started with it."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/fd/2") == str(log):
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_a_daemon_that_misses_its_deadline_is_killed(tmp_path):
    if not (fsutil.kernel_has_fs("fuse") and os.path.exists("/dev/fuse")):
        pytest.skip("no FUSE on this host")
    top, mnt, log = tmp_path / "top", tmp_path / "mnt", tmp_path / "union.log"
    top.mkdir()
    mnt.mkdir()
    state_file = tmp_path / "state.json"
    try:
        try:
            daemon.start(mnt, [f"{top}=rw"], state_file=state_file, log_file=log, wait=0)
        except MountError:
            pass
        else:
            daemon.stop(mnt, state_file)
            pytest.skip("the daemon was ready before a zero deadline passed")
        assert _log_holders(log) == []
        assert not mounts.is_mountpoint(mnt)
    finally:
        for pid in _log_holders(log):
            os.kill(pid, signal.SIGKILL)
        mounts.unmount_all(mnt)


def test_concurrent_get_put(driver):
    driver.create("A", None)
    driver.create("B", "A")
    ids = [f"c{i}" for i in range(8)]
    for id in ids:
        driver.create_rw(id, "B")
    errors = []

    def worker(id):
        try:
            for _ in range(3):
                path = driver.get(id)
                assert path.is_dir()
                driver.put(id)
        except Exception as exc:  # noqa: BLE001 - collected and reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(id,)) for id in ids + ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for id in ids:
        assert not mounts.is_mountpoint(driver._mnt(id))
        driver.remove(id)


def test_mount_survives_the_starting_process_and_is_found_again(driver, home):
    driver.create("base", None)
    driver.create_rw("ctr", "base")
    code = (
        "import pathlib; from cowstore.drivers import open_driver;"
        f"d = open_driver('aufs', {str(home)!r}); p = d.get('ctr'); (p / 'f').write_text('x')"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    mnt = home / "mnt" / "ctr"
    assert mounts.is_mountpoint(mnt)
    assert (mnt / "f").read_text() == "x"
    driver.put("ctr")
    assert not mounts.is_mountpoint(mnt)
    assert (home / "diff" / "ctr" / "f").read_text() == "x"


def test_dead_daemon_is_noticed_and_replaced(driver, home):
    driver.create("base", None)
    driver.create_rw("ctr", "base")
    path = driver.get("ctr")
    (path / "f").write_text("x")
    state = daemon.DaemonState.load(home / "unionfs" / "ctr.json")
    os.kill(state.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while daemon.alive(state) and time.monotonic() < deadline:
        time.sleep(0.01)
    path = driver.get("ctr")
    try:
        assert (path / "f").read_text() == "x"
        assert daemon.DaemonState.load(home / "unionfs" / "ctr.json").pid != state.pid
    finally:
        driver.put("ctr")
    assert not mounts.is_mountpoint(path)
