"""aufs driver specifics (moby's aufs_test.go, ported) on the FUSE union filesystem."""

from __future__ import annotations

import errno
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
from cowstore.drivers.aufs.unionfs.client import FSTYPE, UnionClient
from cowstore.drivers.common import transit
from cowstore.drivers.common.refcount import MountRefs
from cowstore.errors import InvalidArgument, LayerNotFound, MountError, NotSupported
from cowstore.host import mounts, service


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
        try:
            drv.cleanup()
        finally:
            _kill_server(home)
            mounts.unmount_all(home)


def _server_pid(home: pathlib.Path) -> int | None:
    """The pid of the union server answering for `home`, if one does."""
    try:
        return UnionClient(home / "unionfs").client.call("pid")
    except service.ServiceUnavailable:
        return None


def _kill_server(home: pathlib.Path) -> None:
    pid = _server_pid(home)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 5
    while service.running(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


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
    assert mounts.fstype_of(path) == FSTYPE
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
        assert int(meta["ServerPid"]) > 0
        assert int(meta["FuseConnection"]) > 0
        assert meta["ServerLog"] == str(home / "unionfs" / "server.log")
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
        transit.transit_path(home / sub, id, transit.REMOVING) for sub in ("diff", "mnt") for id in ("123", "456")
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


def _fuse_fds(pid: int) -> int:
    """How many FUSE connections process `pid` holds open."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/fuse"
        except OSError:
            continue
    return count


def test_a_failed_mount_leaves_nothing_and_the_server_serves_on(driver, home, tmp_path):
    driver.create("base", None)
    driver.create_rw("ctr", "base")
    path = driver.get("ctr")
    pid = _server_pid(home)
    top = tmp_path / "top"
    top.mkdir()
    missing = tmp_path / "missing"
    try:
        with pytest.raises(InvalidArgument):
            driver.union.mount(tmp_path, [f"{missing}=rw"], timeout=1.0, passthrough=True, source="t")
        with pytest.raises(MountError):
            driver.union.mount(missing, [f"{top}=rw"], timeout=1.0, passthrough=True, source="t")
        with pytest.raises(MountError):  # never stacked over a mount
            driver.union.mount(path, [f"{top}=rw"], timeout=1.0, passthrough=True, source="t")
        assert _fuse_fds(pid) == 1
        assert mounts.mounts_under(tmp_path) == [str(path)]
        (path / "f").write_text("x")
        assert _server_pid(home) == pid
    finally:
        driver.put("ctr")
    assert _fuse_fds(pid) == 0


def test_one_server_serves_every_mount(driver, home):
    driver.create("base", None)
    ids = [f"c{i}" for i in range(4)]
    for id in ids:
        driver.create_rw(id, "base")
    paths = [driver.get(id) for id in ids]
    try:
        metas = [driver.metadata(id) for id in ids]
        assert len({m["ServerPid"] for m in metas}) == 1
        assert len({m["FuseConnection"] for m in metas}) == len(ids)
        for id, path in zip(ids, paths, strict=True):
            (path / "who").write_text(id)
        assert [(home / "diff" / id / "who").read_text() for id in ids] == ids
        assert _fuse_fds(int(metas[0]["ServerPid"])) == len(ids)
    finally:
        for id in ids[1:]:
            driver.put(id)
    assert mounts.is_mountpoint(paths[0])  # the others' unmounts left it alone
    assert (paths[0] / "who").read_text() == "c0"
    driver.put(ids[0])
    assert not any(mounts.is_mountpoint(p) for p in paths)


def _mount_two(driver, home: pathlib.Path) -> int:
    """Mount layers `a` and `b`; returns the pid of the server serving them."""
    driver.create("base", None)
    for id in ("a", "b"):
        driver.create_rw(id, "base")
        driver.get(id)
    pid = _server_pid(home)
    assert pid is not None
    return pid


def _assert_server_gone(home: pathlib.Path, pid: int) -> None:
    _wait_gone(pid)
    assert not service.running(pid)
    assert _server_pid(home) is None
    assert not (home / "unionfs" / "control.sock").exists()
    assert mounts.mounts_under(home) == []


def test_cleanup_stops_the_server_and_leaves_nothing(driver, home):
    pid = _mount_two(driver, home)
    driver.cleanup()
    _assert_server_gone(home, pid)
    assert driver.metadata("a")["Union"] == "fuse"
    path = driver.get("a")  # a new server on the next get
    try:
        assert mounts.is_mountpoint(path)
        assert _server_pid(home) not in (None, pid)
    finally:
        driver.put("a")


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


def test_a_killed_server_is_noticed_and_replaced(driver, home):
    driver.create("base", None)
    for id in ("ctr", "other"):
        driver.create_rw(id, "base")
        (driver.get(id) / "f").write_text(id)
    old = int(driver.metadata("ctr")["ServerPid"])
    os.kill(old, signal.SIGKILL)
    _wait_gone(old)
    with pytest.raises(OSError) as exc:  # what a dead server's mount answers
        os.listdir(home / "mnt" / "ctr")
    assert exc.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    path = driver.get("ctr")
    try:
        assert (path / "f").read_text() == "ctr"
        assert int(driver.metadata("ctr")["ServerPid"]) not in (0, old)
        assert "ServerPid" not in driver.metadata("other")  # still the dead server's mount
    finally:
        driver.put("ctr")
    assert mounts.is_mountpoint(path)  # the first get still holds it
    driver.put("ctr")
    assert not mounts.is_mountpoint(path)
    driver.put("other")  # detaches the dead server's mount
    assert mounts.mounts_under(home) == []


def test_mounts_of_a_killed_server_keep_their_users_and_check_can_clear_them(driver, home):
    driver.create("base", None)
    for id in ("ctr", "once", "other"):
        driver.create_rw(id, "base")
        with open(driver.get(id) / "f", "w") as fh:
            fh.write(id)
            fh.flush()
            os.fsync(fh.fileno())
    driver.get("ctr")  # two users of ctr
    _kill_server(home)
    assert driver.stale_mounts() == ["ctr", "once", "other"]
    path = driver.get("ctr")  # three users now, on a new server
    assert (path / "f").read_text() == "ctr"
    driver.put("once")  # its only user leaves: the dead mount is cleared, not re-established
    assert not mounts.is_mountpoint(home / "mnt" / "once")
    assert driver.stale_mounts() == ["other"]
    driver.clear_stale_mount("other")
    assert driver.stale_mounts() == [] and not mounts.is_mountpoint(home / "mnt" / "other")
    _kill_server(home)
    driver.put("ctr")  # two users left: the mount is re-established for them
    assert (path / "f").read_text() == "ctr"
    driver.put("ctr")
    assert mounts.is_mountpoint(path)
    driver.put("ctr")
    assert mounts.mounts_under(home) == []


def test_a_busy_mount_is_detached_and_served_until_its_last_user_leaves(driver, home):
    driver.create("base", None)
    driver.create_rw("ctr", "base")
    path = driver.get("ctr")
    pid = _server_pid(home)
    with open(path / "f", "w") as held:
        driver.put("ctr")
        assert not mounts.is_mountpoint(path)
        held.write("still served")
    assert (home / "diff" / "ctr" / "f").read_text() == "still served"
    deadline = time.monotonic() + 5
    while _fuse_fds(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _fuse_fds(pid) == 0


def test_a_terminated_server_unmounts_what_it_served(driver, home):
    pid = _mount_two(driver, home)
    os.kill(pid, signal.SIGTERM)
    _assert_server_gone(home, pid)
    path = driver.get("a")
    try:
        assert mounts.is_mountpoint(path)
    finally:
        driver.put("a")


def test_fill_writes_into_the_diff_dir_without_a_union_mount(driver) -> None:
    driver.create("base", None)
    base = driver.get("base")
    (base / "etc").mkdir(mode=0o700)
    os.chown(base / "etc", 7, 7)
    driver.put("base")
    driver.create_rw("init", "base")
    driver.fill("init", lambda root: ((root / "etc").mkdir(), (root / "etc" / "hosts").touch()))
    assert mounts.mounts_under(driver.home) == []
    etc = os.stat(driver.home / "diff" / "init" / "etc")
    assert (etc.st_mode & 0o7777, etc.st_uid) == (0o700, 7)  # the image's directory, as a copy-up keeps it
    assert (driver.home / "diff" / "init" / "etc" / "hosts").is_file()
