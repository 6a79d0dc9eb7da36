"""KernelPool: a pool in the kernel's metadata format, read through the userspace pool, never written."""

from __future__ import annotations

import errno
import io
import json
import pathlib
import shutil
import subprocess

import pytest

from cowstore.drivers.devicemapper import KernelPool, probe_filesystem
from cowstore.drivers.devicemapper.thinpool import ReadOnlyPool, ThinPool, xmldump
from cowstore.errors import MountError
from cowstore.host import loop
from cowstore.host.mounts import MS_RDONLY, mount, umount

from ...support.dockerroots import leave_journal_unclean, to_kernel_format
from ...support.drivers import open_or_skip
from ...support.tars import E, build
from ...support.trees import source_fingerprint


def _pool(home: pathlib.Path, text: bytes, tools: tuple[str, ...], **options: str) -> pathlib.Path:
    """A devicemapper home with layer "a" (a file) and its child "b" (journal left unclean), in kernel format."""
    if not all(shutil.which(tool) for tool in ("thin_restore", "thin_dump", *tools)):
        pytest.skip(f"one of thin-provisioning-tools, {', '.join(tools)} is not installed")
    driver = open_or_skip("devicemapper", home, **options)
    try:
        driver.create("a", None)
        driver.apply_diff("a", None, io.BytesIO(build(E("hello", data=text))))
        driver.create_rw("b", "a")
        leave_journal_unclean(driver, "b")
    finally:
        driver.cleanup()
    to_kernel_format(home / "devicemapper")
    return home


@pytest.fixture(scope="module")
def kernel_pool(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return _pool(tmp_path_factory.mktemp("kpool") / "devicemapper", b"from the kernel pool\n", ("debugfs",))


@pytest.fixture(scope="module")
def xfs_pool(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Docker's default filesystem (mkfs.xfs wants 300 MiB at least: thin devices are sparse)."""
    home = tmp_path_factory.mktemp("kpool-xfs") / "devicemapper"
    return _pool(home, b"from an xfs thin device\n", ("mkfs.xfs", "xfs_io"), **{"dm.fs": "xfs", "dm.basesize": "320M"})


def _device(home: pathlib.Path, id: str) -> tuple[int, int]:
    record = json.loads((home / "metadata" / id).read_text())
    return record["device_id"], record["size"]


def test_devices_mount_read_only_and_the_pool_is_not_written(kernel_pool: pathlib.Path, tmp_path: pathlib.Path) -> None:
    before = source_fingerprint(kernel_pool)
    sizes = dict(_device(kernel_pool, id) for id in ("a", "b", "base"))
    files = kernel_pool / "devicemapper"
    with KernelPool(files / "metadata", files / "data", sizes=sizes) as pool:
        for id in ("a", "b"):
            target = tmp_path / id
            target.mkdir()
            with pool.mounted(_device(kernel_pool, id)[0], target) as root:
                assert (root / "rootfs" / "hello").read_text() == "from the kernel pool\n"
                with pytest.raises(OSError) as refused:
                    (root / "rootfs" / "new").write_text("no")
                assert refused.value.errno == errno.EROFS
    assert source_fingerprint(kernel_pool) == before


@pytest.mark.parametrize(
    ("pool_fixture", "fstype", "plain"), [("kernel_pool", "ext4", ""), ("xfs_pool", "xfs", "nouuid")]
)
def test_an_unclean_journal_is_not_replayed(
    request: pytest.FixtureRequest, pool_fixture: str, fstype: str, plain: str, tmp_path: pathlib.Path
) -> None:
    """A plain read-only mount wants to replay the journal and fails; the pool's mount skips
    it (`noload` for ext4, `norecovery` for xfs) and mounts two snapshots of one base at once."""
    home: pathlib.Path = request.getfixturevalue(pool_fixture)
    before = source_fingerprint(home)
    sizes = dict(_device(home, id) for id in ("a", "b", "base"))
    files = home / "devicemapper"
    with KernelPool(files / "metadata", files / "data", sizes=sizes) as pool:
        device_id = _device(home, "b")[0]
        path = pool.client.call("activate", id=device_id, name="probe")
        try:
            assert probe_filesystem(path) == fstype
            with loop.attached(path, read_only=True) as device, pytest.raises(MountError):
                mount(device, tmp_path, fstype, MS_RDONLY, plain or None)
                umount(tmp_path)
        finally:
            loop.detach(path)
            pool.client.call("deactivate", name="probe")
        a, b = tmp_path / "a", tmp_path / "b"
        a.mkdir()
        b.mkdir()
        with pool.mounted(_device(home, "a")[0], a) as one, pool.mounted(device_id, b) as two:
            assert (one / "rootfs" / "hello").read_bytes() == (two / "rootfs" / "hello").read_bytes()
    assert source_fingerprint(home) == before


def test_a_read_only_pool_refuses_writes(kernel_pool: pathlib.Path, tmp_path: pathlib.Path) -> None:
    files = kernel_pool / "devicemapper"
    model = tmp_path / "model"
    model.write_bytes(bytes(64 << 20))
    (tmp_path / "dump.xml").write_text(_thin_dump(files / "metadata"))
    xmldump.restore(tmp_path / "dump.xml", model, files / "data", read_only=True)
    before = source_fingerprint(files)
    with ThinPool.open(model, files / "data", read_only=True, min_free_pct=0) as pool:
        device_id = _device(kernel_pool, "a")[0]
        assert pool.read(device_id, 0, 4096)
        for attempt in (lambda: pool.write(device_id, 0, b"x"), lambda: pool.discard(device_id, 0, 65536)):
            with pytest.raises(ReadOnlyPool) as refused:
                attempt()
            assert refused.value.errno == errno.EROFS
    assert source_fingerprint(files) == before


def _thin_dump(metadata: pathlib.Path) -> str:
    return subprocess.run(["thin_dump", str(metadata)], check=True, capture_output=True, text=True).stdout
