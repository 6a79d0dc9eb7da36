"""`system reset`: every mount, server and loop device of a store released, its root removed."""

from __future__ import annotations

import os
import pathlib

import pytest

from cowstore.app.demo import build_image_archive
from cowstore.archive import Limits
from cowstore.errors import InvalidArgument, NotSupported
from cowstore.host import loop, mounts, service
from cowstore.images import load
from cowstore.store import Store
from cowstore.system.reset import reset

from ..support.drivers import HOST_OPTIONS
from ..support.loopfs import loop_filesystem

MiB = 1024 * 1024


def _leftovers(path: pathlib.Path) -> tuple[list[str], list[str], list[int]]:
    return mounts.mounts_under(path), loop.attached_below(path), service.servers_below(path)


def _mounted_store(root: pathlib.Path, driver: str, archive: pathlib.Path) -> None:
    try:
        store = Store(root, driver, HOST_OPTIONS.get(driver), limits=Limits(min_free_disk=0))
    except NotSupported as exc:
        pytest.skip(f"{driver}: {exc}")
    try:
        load(store.images, archive)
        store.containers.create("busybox-demo", name="c")
        (store.containers.mount("c") / "f").write_text("left mounted")
    finally:
        store.close()  # like the CLI: the mount, the servers and loop devices stay


@pytest.mark.parametrize("driver", ["aufs", "btrfs", "devicemapper", "overlay2"])
@pytest.mark.parametrize("broken", [False, True], ids=["clean", "broken"])
def test_reset_releases_everything(driver: str, broken: bool, tmp_path: pathlib.Path) -> None:
    archive = tmp_path / "img.tar"
    archive.write_bytes(build_image_archive())
    root = tmp_path / "root"
    try:
        _mounted_store(root, driver, archive)
        assert _leftovers(root)[0]
        if broken:  # the store no longer opens: it is taken apart from the outside
            (root / "cowstore.db").write_bytes(b"not a database" * 100)
        report = reset(root, driver, HOST_OPTIONS.get(driver))
        assert (report.shutdown_error is not None) == broken
        assert _leftovers(root) == ([], [], [])
        assert not root.exists()
    finally:
        if root.exists():
            reset(root)


def test_reset_of_a_root_that_is_a_mount_point_empties_it(tmp_path: pathlib.Path) -> None:
    archive = tmp_path / "img.tar"
    archive.write_bytes(build_image_archive())
    with loop_filesystem(tmp_path, 256 * MiB) as fs:
        _mounted_store(fs, "overlay2", archive)
        reset(fs, "overlay2")
        assert mounts.is_mountpoint(fs) and os.listdir(fs) == []
        assert mounts.mounts_under(fs) == [os.path.realpath(fs)]


def test_reset_refuses_a_directory_that_is_no_store(tmp_path: pathlib.Path) -> None:
    (tmp_path / "precious").write_text("keep")
    with pytest.raises(InvalidArgument):
        reset(tmp_path)
    assert (tmp_path / "precious").read_text() == "keep"
    reset(tmp_path / "missing")  # nothing to do
