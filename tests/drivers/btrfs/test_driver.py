"""btrfs driver: loopback set-up, nested subvolumes, qgroup sizes, the chunk-full trap.

Every test runs on its own btrfs image loop-mounted in a temporary directory (the
root filesystem here is ext4). The fixtures undo all of it even when a test fails:
the driver's cleanup first, then `umount` and `losetup -d` of whatever is left.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pathlib
import random
import shutil
import subprocess
import tarfile
from collections.abc import Iterator

import pytest

from cowstore.archive import Change, changes_dirs
from cowstore.drivers import open_driver
from cowstore.drivers.btrfs import BtrfsDriver, balance, fastdiff, loopback, space
from cowstore.drivers.btrfs import ioctl as btrfsioctl
from cowstore.drivers.common.refcount import MountRefs
from cowstore.errors import ArchiveError, InvalidOption, LayerExists, LayerNotFound, NotSupported
from cowstore.host import fsutil, loop, mounts


def _host_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mount, loop devices)"
    if "btrfs" not in pathlib.Path("/proc/filesystems").read_text():
        return "kernel has no btrfs"
    if shutil.which("mkfs.btrfs") is None:
        return "mkfs.btrfs (btrfs-progs) is not installed"
    if not os.path.exists("/dev/loop-control"):
        return "no loop device support"
    return None


pytestmark = pytest.mark.skipif(_host_problem() is not None, reason=str(_host_problem()))


def _force_release(home: pathlib.Path) -> None:
    """Safety net with the system tools, independent of the code under test."""
    for point in mounts.mounts_under(home):
        subprocess.run(["umount", "-l", point], check=False)
    device = loop.find(loopback.image_path(home))
    if device is not None:
        subprocess.run(["losetup", "-d", device], check=False)


@contextlib.contextmanager
def _store(tmp_path: pathlib.Path, size: str = "1G", **options: str) -> Iterator[BtrfsDriver]:
    home = tmp_path / "btrfs"
    try:
        driver = open_driver("btrfs", home, {"btrfs.loopback": size, **options})
        assert isinstance(driver, BtrfsDriver)
        try:
            yield driver
        finally:
            driver.cleanup()
    finally:
        _force_release(home)


@pytest.fixture
def driver(tmp_path: pathlib.Path) -> Iterator[BtrfsDriver]:
    with _store(tmp_path) as drv:
        yield drv


def _subvolumes_below(driver: BtrfsDriver, path: pathlib.Path) -> list[tuple[int, int, str]]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return btrfsioctl.child_subvolumes(fd, btrfsioctl.subvol_id(fd))
    finally:
        os.close(fd)


# -- loopback -------------------------------------------------------------------------


def test_loopback_image_is_sparse_mounted_and_released(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "btrfs"
    with _store(tmp_path) as driver:
        image = loopback.image_path(home)
        assert image.parent == tmp_path
        assert image.stat().st_size == 1024**3
        assert image.stat().st_blocks * 512 < 64 * 1024**2
        assert mounts.is_mountpoint(home)
        assert fsutil.backing_fs(home) == "btrfs"
        status = dict(driver.status())
        assert status["Loopback File"] == str(image)
        assert status["Loop Device"] == loop.find(image)
    assert not mounts.is_mountpoint(home)
    assert loop.find(image) is None


def test_reopen_after_reboot_remounts_without_the_option(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "btrfs"
    with _store(tmp_path) as driver:
        driver.create("base", None)
        (driver.get("base") / "kept").write_text("across reboots")
        driver.put("base")
    # cleanup() above unmounted and detached everything, as a reboot would.
    try:
        again = open_driver("btrfs", home, {})
        try:
            assert (again.get("base") / "kept").read_text() == "across reboots"
            again.put("base")
        finally:
            again.cleanup()
    finally:
        _force_release(home)


def test_opening_twice_reuses_the_mount(tmp_path: pathlib.Path) -> None:
    with _store(tmp_path) as driver:
        second = open_driver("btrfs", driver.home, {"btrfs.loopback": "1G"})
        assert [row.target for row in mounts.mount_table()].count(str(driver.home)) == 1
        assert second.image == driver.image


def test_home_not_on_btrfs_is_not_supported(tmp_path: pathlib.Path) -> None:
    if fsutil.backing_fs(tmp_path) == "btrfs":
        pytest.skip("the temporary directory is on btrfs already")
    with pytest.raises(NotSupported, match="btrfs.loopback"):
        open_driver("btrfs", tmp_path / "btrfs", {})


def test_unknown_and_invalid_options_are_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(InvalidOption, match="unknown option"):
        open_driver("btrfs", tmp_path / "btrfs", {"btrfs.nope": "1"})
    with pytest.raises(InvalidOption, match="invalid size"):
        open_driver("btrfs", tmp_path / "btrfs", {"btrfs.loopback": "lots"})
    assert not loopback.image_path(tmp_path / "btrfs").exists()


# -- subvolumes -----------------------------------------------------------------------


def test_layers_are_subvolumes_and_snapshots_of_their_parent(driver: BtrfsDriver) -> None:
    driver.create("base", None)
    driver.create_rw("child", "base")
    base, child = driver.get("base"), driver.get("child")
    assert base == driver.home / "subvolumes" / "base"
    assert btrfsioctl.is_subvolume(os.stat(base)) and btrfsioctl.is_subvolume(os.stat(child))
    fds = [os.open(p, os.O_RDONLY | os.O_DIRECTORY) for p in (base, child)]
    try:
        base_info, child_info = (btrfsioctl.subvol_info(fd) for fd in fds)
    finally:
        for fd in fds:
            os.close(fd)
    assert child_info.parent_uuid == base_info.uuid
    driver.put("child")
    driver.put("base")


def test_remove_deletes_nested_subvolumes_first(driver: BtrfsDriver) -> None:
    driver.create_rw("test", None)
    root = driver.get("test")
    (root / "deep" / "er").mkdir(parents=True)
    for parent, name in ((root, "subvoltest"), (root / "deep" / "er", "inner")):
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            btrfsioctl.subvol_create(fd, name)
        finally:
            os.close(fd)
    fd = os.open(root / "subvoltest", os.O_RDONLY | os.O_DIRECTORY)
    try:
        btrfsioctl.subvol_create(fd, "nested-in-nested")
    finally:
        os.close(fd)
    (root / "subvoltest" / "nested-in-nested" / "file").write_text("x")
    assert len(_subvolumes_below(driver, root)) == 2
    driver.put("test")
    driver.remove("test")
    assert not driver.exists("test")
    assert not (driver.home / "subvolumes" / "test").exists()
    assert os.listdir(driver.home / "removing") == []
    assert _subvolumes_below(driver, driver.home / "subvolumes") == []


def test_layer_id_errors(driver: BtrfsDriver) -> None:
    driver.create("one", None)
    with pytest.raises(LayerExists):
        driver.create("one", None)
    with pytest.raises(LayerNotFound):
        driver.create("two", "missing")
    driver.remove("missing")  # not an error: recovery removes again what may be gone
    with pytest.raises(LayerNotFound):
        driver.get("missing")
    with pytest.raises(InvalidOption):
        driver.create("../escape", None)
    assert not driver.exists("two")


def test_interrupted_remove_is_finished_on_open(tmp_path: pathlib.Path) -> None:
    with _store(tmp_path) as driver:
        driver.create("base", None)
        driver.create("child", "base")
        # A crash right after remove() moved the layer out of the way.
        os.rename(driver.home / "subvolumes" / "child", driver.home / "removing" / "child-dead")
        reopened = open_driver("btrfs", driver.home, {})
        assert os.listdir(reopened.home / "removing") == []
        assert reopened.exists("base") and not reopened.exists("child")


def test_open_leaves_a_removal_in_progress_alone(tmp_path: pathlib.Path) -> None:
    with _store(tmp_path) as driver:
        driver.create("busy", None)
        with MountRefs(driver.home).locked("busy"):  # as a live remove("busy") holds it
            os.rename(driver.home / "subvolumes" / "busy", driver.home / "removing" / "busy-live")
            open_driver("btrfs", driver.home, {})
            assert os.listdir(driver.home / "removing") == ["busy-live"]
        open_driver("btrfs", driver.home, {})
        assert os.listdir(driver.home / "removing") == []


# -- quotas ---------------------------------------------------------------------------


def test_size_sets_a_qgroup_limit_that_holds(driver: BtrfsDriver) -> None:
    assert not driver.quota_enabled()
    driver.create("base", None)
    driver.create_rw("box", "base", storage_opts={"size": "20M"})
    assert driver.quota_enabled()
    assert (driver.home / "quotas" / "box").read_text() == str(20 * 1024**2)
    root = driver.get("box")
    (root / "eight").write_bytes(os.urandom(8 * 1024**2))
    usage = driver.layer_usage("box")
    assert usage is not None and usage[0] >= 8 * 1024**2
    with pytest.raises(OSError) as info, open(root / "too-much", "wb") as fh:
        for _ in range(20):
            fh.write(os.urandom(1024**2))
            fh.flush()
        os.fsync(fh.fileno())
    assert info.value.errno in (errno.EDQUOT, errno.ENOSPC)
    driver.put("box")
    driver.remove("box")
    assert not (driver.home / "quotas" / "box").exists()


def test_limit_comes_back_after_quotas_were_switched_off(driver: BtrfsDriver) -> None:
    driver.create_rw("box", None, storage_opts={"size": "10M"})
    fd = os.open(driver.home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        btrfsioctl.quota_ctl(fd, btrfsioctl.QUOTA_CTL_DISABLE)
    finally:
        os.close(fd)
    assert not driver.quota_enabled()
    root = driver.get("box")
    assert driver.quota_enabled()
    with pytest.raises(OSError) as info, open(root / "big", "wb") as fh:
        for _ in range(12):
            fh.write(os.urandom(1024**2))
            fh.flush()
        os.fsync(fh.fileno())
    assert info.value.errno in (errno.EDQUOT, errno.ENOSPC)
    driver.put("box")


def test_min_space_and_invalid_sizes(tmp_path: pathlib.Path) -> None:
    with _store(tmp_path, **{"btrfs.min_space": "10M"}) as driver:
        assert driver.quota_enabled()
        with pytest.raises(InvalidOption, match="cannot be less than"):
            driver.create_rw("small", None, storage_opts={"size": "5M"})
        with pytest.raises(InvalidOption, match="invalid storage size"):
            driver.create_rw("zero", None, storage_opts={"size": "0"})
        with pytest.raises(InvalidOption, match="unknown storage option"):
            driver.create_rw("other", None, storage_opts={"inodes": "5"})
        assert not driver.exists("small") and not driver.exists("zero") and not driver.exists("other")
        driver.create_rw("ok", None, storage_opts={"size": "10M"})


# -- status and the chunk-full trap ---------------------------------------------------


def test_status_names_versions_and_chunk_allocation(driver: BtrfsDriver) -> None:
    status = driver.status()
    keys = [k for k, _ in status]
    assert keys[:2] == ["Build Version", "Library Version"]
    assert dict(status)["Build Version"].startswith("Btrfs v")
    for key in (
        "Device Size",
        "Device Allocated",
        "Device Unallocated",
        "Data Space Allocated",
        "Data Space Used",
        "Metadata Space Allocated",
        "Metadata Space Used",
        "Quotas",
    ):
        assert key in keys
    assert "WARNING" not in keys


def _fill_metadata(directory: pathlib.Path, prefix: str, limit: int) -> int:
    """Create files carrying 3 large xattrs (metadata only) until ENOSPC; how many fit."""
    directory.mkdir(exist_ok=True)
    value = b"v" * 3900
    count = 0
    try:
        while count < limit:
            path = directory / f"{prefix}{count}"
            path.touch()
            for j in range(3):
                os.setxattr(path, f"user.x{j}", value)
            count += 1
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    return count


def test_chunk_full_trap_warning_and_balance(tmp_path: pathlib.Path) -> None:
    with _store(tmp_path, size="256M") as driver:
        driver.create_rw("c", None)
        root = driver.get("c")
        # Fill the device with 1 MiB files: data chunks take every unallocated byte.
        blob = os.urandom(1024**2)
        count = 0
        with pytest.raises(OSError) as info:
            while True:
                (root / f"big{count}").write_bytes(blob)
                count += 1
        assert info.value.errno == errno.ENOSPC
        # Delete every other file: each data chunk is half empty, none is freed.
        for i in range(0, count, 2):
            (root / f"big{i}").unlink()
        os.sync()
        status = dict(driver.status())
        assert "fully allocated" in status["WARNING"]
        # The trap: metadata cannot grow, ENOSPC, while df reports tens of MB free.
        fitted = _fill_metadata(root / "meta", "m", 100_000)
        free = os.statvfs(root)
        assert free.f_bavail * free.f_frsize > 50 * 1024**2
        # Balance needs some metadata room to work in: free half of it first.
        for i in range(0, fitted, 2):
            (root / "meta" / f"m{i}").unlink()
        os.sync()
        result = balance(driver, 60)
        assert result["chunks_relocated"] > 0
        assert result["freed_bytes"] >= space.allocation(driver.home).chunk_size
        assert "WARNING" not in dict(driver.status())
        # Space is usable again: more metadata fits than the half that was freed.
        again = _fill_metadata(root / "meta", "k", fitted * 4)
        assert again > fitted
        driver.put("c")


# -- the generation-based fast diff ---------------------------------------------------

_CAPABILITY = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"


def _populate(root: pathlib.Path, rng: random.Random) -> None:
    for d in range(6):
        directory = root / f"d{d}" / f"sub{d % 2}"
        directory.mkdir(parents=True, exist_ok=True)
        for f in range(6):
            (directory / f"f{f}").write_bytes(rng.randbytes(rng.randint(0, 3000)))
        (root / f"d{d}" / "top").write_text(str(d))
    (root / "link").symlink_to("d0/top")
    os.link(root / "d1" / "top", root / "d1" / "top-hardlink")


def _mutate(root: pathlib.Path, rng: random.Random, steps: int) -> None:
    """Random edits of every kind the naive comparison distinguishes."""
    for step in range(steps):
        entries = sorted(root.rglob("*"))
        files = [p for p in entries if p.is_file() and not p.is_symlink()]
        dirs = [p for p in entries if p.is_dir() and not p.is_symlink()]
        op = rng.randrange(14)
        with contextlib.suppress(FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, OSError):
            if op == 0 and files:
                rng.choice(files).write_bytes(rng.randbytes(rng.randint(1, 5000)))
            elif op == 1 and files:
                target = rng.choice(files)
                size = target.stat().st_size
                with open(target, "r+b") as fh:  # same size, new content and mtime
                    fh.write(rng.randbytes(min(size, 10)))
            elif op == 2 and entries:
                rng.choice(entries).chmod(rng.choice((0o700, 0o755, 0o644, 0o4755)))
            elif op == 3 and entries:
                os.lchown(rng.choice(entries), rng.randint(0, 3), rng.randint(0, 3))
            elif op == 4 and files:
                rng.choice(files).unlink()
            elif op == 5 and len(dirs) > 2:
                shutil.rmtree(rng.choice(dirs))
            elif op == 6:
                parent = rng.choice(dirs + [root])
                (parent / f"new{step}" / "deep").mkdir(parents=True)
                (parent / f"new{step}" / "deep" / "file").write_text("x")
            elif op == 7 and files:
                rng.choice(files).rename(rng.choice(dirs + [root]) / f"moved{step}")
            elif op == 8 and len(dirs) > 2:
                rng.choice(dirs).rename(rng.choice([root] + dirs) / f"dmoved{step}")
            elif op == 9 and files:
                target = rng.choice(files)
                target.unlink()
                target.mkdir()
                (target / "inside").write_text("now a dir")
            elif op == 10 and len(dirs) > 2:
                target = rng.choice(dirs)
                shutil.rmtree(target)
                target.write_text("now a file")
            elif op == 11 and files:
                os.link(rng.choice(files), rng.choice(dirs + [root]) / f"hard{step}")
            elif op == 12 and files:
                os.setxattr(rng.choice(files), "security.capability", _CAPABILITY)
            elif op == 13 and files:
                target = rng.choice(files)
                st = target.stat()
                os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


@pytest.fixture(scope="module")
def diff_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BtrfsDriver]:
    with _store(tmp_path_factory.mktemp("btrfs-diff")) as drv:
        yield drv


@pytest.mark.parametrize("seed", range(12))
def test_fast_changes_equal_the_naive_comparison(diff_store: BtrfsDriver, seed: int) -> None:
    rng = random.Random(seed)
    base, child = f"base-{seed}", f"child-{seed}"
    diff_store.create(base, None)
    _populate(diff_store.get(base), rng)
    diff_store.create_rw(child, base)
    new, old = diff_store.get(child), diff_store.get(base)
    _mutate(new, rng, steps=1 + seed * 3)
    fast = fastdiff.changes(new, old)
    assert fast is not None
    assert fast == changes_dirs(new, old)
    assert diff_store.changes(child, base) == fast
    diff_store.remove(child)
    diff_store.remove(base)


def test_fast_changes_of_an_untouched_snapshot_are_empty(diff_store: BtrfsDriver) -> None:
    diff_store.create("quiet-base", None)
    _populate(diff_store.get("quiet-base"), random.Random(1))
    diff_store.create("quiet", "quiet-base")
    assert fastdiff.changes(diff_store.get("quiet"), diff_store.get("quiet-base")) == []


def test_fast_changes_decline_when_they_cannot_be_sure(diff_store: BtrfsDriver) -> None:
    diff_store.create("p", None)
    (diff_store.get("p") / "file").write_text("one")
    diff_store.create_rw("c", "p")
    diff_store.create("other", None)
    c, p, other = diff_store.get("c"), diff_store.get("p"), diff_store.get("other")
    (c / "added").write_text("x")
    # Not a snapshot of that layer: no common history to compare generations with.
    assert fastdiff.changes(c, other) is None
    # The parent changed after the snapshot: its generations no longer describe the child.
    (p / "file").write_text("two")
    assert fastdiff.changes(c, p) is None
    assert diff_store.changes("c", "p") == changes_dirs(c, p)
    assert Change("/added", "A") in diff_store.changes("c", "p")


def test_hostile_tar_stays_inside_the_subvolume(driver: BtrfsDriver) -> None:
    driver.create("victim", None)
    (driver.get("victim") / "precious").write_text("keep")
    driver.create("layer", None)
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("../victim/precious", "../../subvolumes/victim/precious"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    data.seek(0)
    with pytest.raises(ArchiveError):
        driver.apply_diff("layer", None, data)
    assert (driver.get("victim") / "precious").read_text() == "keep"
    assert sorted(os.listdir(driver.home / "subvolumes")) == ["layer", "victim"]
