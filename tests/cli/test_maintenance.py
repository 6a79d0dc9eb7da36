"""`cowstore check`, `cowstore btrfs balance` and `cowstore devicemapper ls|status|dump` through the CLI."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess

import pytest
from click.testing import CliRunner, Result

from cowstore.app.demo import build_image_archive
from cowstore.cli import main
from cowstore.errors import NotSupported
from cowstore.store import Store


def run(root: pathlib.Path, driver: str, *args: str, opts: tuple[str, ...] = ()) -> Result:
    extra = [item for opt in opts for item in ("--storage-opt", opt)]
    return CliRunner().invoke(main, ["--root", str(root), "--driver", driver, *extra, *args])


@pytest.fixture
def store_root(tmp_path: pathlib.Path):
    root = tmp_path / "root"
    opened: list[tuple[str, tuple[str, ...]]] = []
    yield root, opened
    for driver, opts in opened:
        options = dict(o.split("=", 1) for o in opts)
        Store(root, driver, options).shutdown()


def test_check_reports_and_repairs(store_root, tmp_path: pathlib.Path) -> None:
    root, opened = store_root
    opened.append(("vfs", ()))
    archive = tmp_path / "img.tar"
    archive.write_bytes(build_image_archive())
    assert run(root, "vfs", "load", "-i", str(archive)).exit_code == 0
    assert run(root, "vfs", "create", "--name", "c1", "busybox-demo").exit_code == 0
    result = run(root, "vfs", "check")
    assert result.exit_code == 0 and "consistent" in result.stdout
    (root / "vfs" / "dir" / "stray-layer").mkdir()
    with Store(root, "vfs") as store:
        with store.layers.db.transaction() as tx:
            tx.execute("UPDATE layers SET refcount = refcount + 5")
    result = run(root, "vfs", "check", "--format", "json")
    assert result.exit_code == 1
    kinds = sorted(p["kind"] for p in json.loads(result.stdout))
    assert kinds == ["orphan-storage", "refcount", "refcount"]
    result = run(root, "vfs", "check", "--repair")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("repaired:") == 3
    assert run(root, "vfs", "check", "--verify").exit_code == 0
    assert run(root, "vfs", "diff", "c1").exit_code == 0


def test_btrfs_balance(store_root) -> None:
    if shutil.which("mkfs.btrfs") is None:
        pytest.skip("mkfs.btrfs is not installed")
    root, opened = store_root
    opts = ("btrfs.loopback=512M",)
    opened.append(("btrfs", opts))
    result = run(root, "btrfs", "info", opts=opts)
    if isinstance(result.exception, NotSupported):
        opened.clear()
        pytest.skip(str(result.exception))
    assert result.exit_code == 0, result.output
    result = run(root, "btrfs", "btrfs", "balance", "--dusage", "10", opts=opts)
    assert result.exit_code == 0, result.output
    assert "relocated" in result.stdout and "freed" in result.stdout
    assert run(root, "vfs", "btrfs", "balance").exit_code != 0


def test_devicemapper_commands(store_root) -> None:
    root, opened = store_root
    opts = ("dm.loopdatasize=512M", "dm.loopmetadatasize=64M", "dm.basesize=256M", "dm.fs=ext4")
    opened.append(("devicemapper", opts))
    result = run(root, "devicemapper", "devicemapper", "status", opts=opts)
    assert result.exit_code == 0, result.output
    assert "Pool Blocksize: 65.54kB" in result.stdout and "Data Space Used" in result.stdout
    assert run(root, "devicemapper", "devicemapper", "ls", opts=opts).stdout.startswith("ID\tLAYER")
    dump = run(root, "devicemapper", "devicemapper", "dump", opts=opts).stdout
    assert dump.startswith("<superblock")
    if shutil.which("thin_restore"):
        xml = root.parent / "dump.xml"
        meta = root.parent / "meta.bin"
        xml.write_text(dump)
        with open(meta, "wb") as fh:
            fh.truncate(8 * 1024 * 1024)
        subprocess.run(["thin_restore", "-i", str(xml), "-o", str(meta)], check=True, capture_output=True)
        subprocess.run(["thin_check", str(meta)], check=True, capture_output=True)
