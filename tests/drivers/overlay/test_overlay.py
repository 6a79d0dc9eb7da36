"""Legacy overlay: hard-linked image trees, one lowerdir per container mount."""

from __future__ import annotations

import io
import os
import pathlib
import tarfile
from collections.abc import Iterator

import pytest

from cowstore.archive.whiteouts import is_overlay_whiteout
from cowstore.drivers import open_driver
from cowstore.drivers.overlay import OverlayDriver
from cowstore.errors import InvalidOption, NotSupported
from cowstore.host import fsutil, mounts

from ...support.drivers import opened

pytestmark = pytest.mark.skipif(not fsutil.kernel_has_fs("overlay"), reason="kernel has no overlay filesystem")


@pytest.fixture
def driver(tmp_path: pathlib.Path) -> Iterator[OverlayDriver]:
    with opened(OverlayDriver, "overlay", tmp_path / "overlay") as drv:
        yield drv


@pytest.fixture
def docker_layout(tmp_path: pathlib.Path) -> Iterator[OverlayDriver]:
    with opened(OverlayDriver, "overlay", tmp_path / "docker", {"layout": "docker"}) as drv:
        yield drv


def _tar(files: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def test_image_layers_share_unchanged_files_by_hard_link(driver: OverlayDriver) -> None:
    driver.create("base", None)
    driver.apply_diff("base", None, _tar({"same": b"s", "changed": b"old", "gone": b"g"}))
    driver.create("img", "base")
    driver.apply_diff("img", "base", _tar({"changed": b"new", ".wh.gone": b""}))
    base, img = driver.home / "base" / "root", driver.home / "img" / "root"
    assert sorted(os.listdir(driver.home / "img")) == ["root"]
    assert os.stat(base / "same").st_ino == os.stat(img / "same").st_ino
    assert os.stat(base / "changed").st_ino != os.stat(img / "changed").st_ino
    assert (base / "changed").read_bytes() == b"old" and (base / "gone").exists()
    assert (img / "changed").read_bytes() == b"new" and not (img / "gone").exists()
    assert driver.metadata("img") == {"RootDir": str(img)}


def test_container_mounts_one_lowerdir(docker_layout: OverlayDriver) -> None:
    driver = docker_layout
    driver.create("base", None)
    driver.apply_diff("base", None, _tar({"f": b"base"}))
    driver.create_rw("init", "base")
    with_init = driver.get("init")
    try:
        (with_init / "f").unlink()
        (with_init / "hosts").write_text("")
    finally:
        driver.put("init")
    driver.create_rw("c", "init")
    layer = driver.home / "c"
    assert sorted(os.listdir(layer)) == ["lower-id", "upper", "work"]
    assert (layer / "lower-id").read_text() == "base"
    assert is_overlay_whiteout(os.lstat(layer / "upper" / "f"))  # copied from the -init upper
    root = driver.get("c")
    try:
        assert driver.get("c") == root
        driver.put("c")
        assert mounts.is_mountpoint(root)
        assert sorted(os.listdir(root)) == ["hosts"]
        assert len([row for row in _overlay_mounts() if row.target == str(root)]) == 1
    finally:
        driver.put("c")
    assert not mounts.is_mountpoint(root)
    assert driver.metadata("c") == {
        "LowerDir": str(driver.home / "base" / "root"),
        "UpperDir": str(layer / "upper"),
        "WorkDir": str(layer / "work"),
        "MergedDir": str(layer / "merged"),
    }


def test_compact_container_on_a_filled_init_tree(driver: OverlayDriver) -> None:
    driver.create("base", None)
    driver.apply_diff("base", None, _tar({"f": b"base", "hosts": b"image"}))
    driver.create_rw("init", "base")
    driver.fill("init", lambda root: ((root / "hosts").unlink(), (root / "hosts").write_text("")))
    init, base = driver.home / "init" / "root", driver.home / "base" / "root"
    assert sorted(os.listdir(driver.home / "init")) == ["root"]  # a complete tree now, no mount made
    assert os.stat(init / "f").st_ino == os.stat(base / "f").st_ino
    assert (base / "hosts").read_bytes() == b"image" and (init / "hosts").read_bytes() == b""
    driver.create_rw("c", "init")
    layer = driver.home / "c"
    assert os.listdir(layer) == [] and driver.refs.note("c", "lower") == "init"
    root = driver.get("c")
    try:
        assert root == driver.home / "merged" / "c"
        (root / "f").write_text("changed")
        (root / "hosts").unlink()
        assert driver.metadata("c") == {
            "LowerDir": str(init),
            "UpperDir": str(layer),
            "WorkDir": str(root),
            "MergedDir": str(root),
        }
    finally:
        driver.put("c")
    assert not (driver.home / "merged" / "c").exists()
    # The upper dir is the changeset against the one lower: no mount to diff or commit.
    assert [(c.path, c.kind) for c in driver.changes("c", "init")] == [("/f", "C"), ("/hosts", "D")]
    assert mounts.mounts_under(driver.home) == []
    with driver.diff("c", "init") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        assert sorted(tar.getnames()) == [".wh.hosts", "f"]
    assert driver.diff_size("c", "init") == len("changed")
    driver.remove("c")
    driver.remove("init")
    assert sorted(os.listdir(driver.home)) == ["base", "merged", "mountpoints"]


def _overlay_mounts() -> list[mounts.Mount]:
    return [row for row in mounts.mount_table() if row.fstype == "overlay"]


def test_storage_opts_and_options_are_refused(driver: OverlayDriver, tmp_path: pathlib.Path) -> None:
    with pytest.raises(NotSupported, match="storage-opt"):
        driver.create_rw("c", None, storage_opts={"size": "10M"})
    with pytest.raises(InvalidOption):
        open_driver("overlay", tmp_path / "x", {"overlay.size": "1G"})
    assert [k for k, _ in driver.status()] == ["Backing Filesystem", "Supports d_type"]


def test_remove_while_mounted_unmounts(driver: OverlayDriver) -> None:
    driver.create("base", None)
    driver.create_rw("c", "base")
    root = driver.get("c")
    driver.remove("c")
    assert not mounts.is_mountpoint(root)
    assert sorted(os.listdir(driver.home)) == ["base", "merged", "mountpoints"]
