"""Start-up sweeps delete what crashed processes left, never what live ones are building."""

from __future__ import annotations

import os
import pathlib

import pytest

from cowstore.drivers import open_driver
from cowstore.drivers.common import transit
from cowstore.drivers.common.refcount import MountRefs
from cowstore.errors import NotSupported
from cowstore.host import fsutil


def test_transit_names_round_trip() -> None:
    path = transit.transit_path(pathlib.Path("/x"), "a-b.c", transit.CREATING)
    assert path.name.startswith(".a-b.c-") and path.name.endswith("-creating")
    assert transit.transit_id(path.name) == "a-b.c"
    for other in ("a-b.c", ".a-1234-other", ".-1234-creating", "...-1234-removing", ".hidden"):
        assert transit.transit_id(other) is None


def test_sweep_leaves_a_locked_staging_dir_alone(tmp_path: pathlib.Path) -> None:
    refs = MountRefs(tmp_path)
    busy = transit.transit_path(tmp_path, "busy", transit.CREATING)
    dead = transit.transit_path(tmp_path, "dead", transit.REMOVING)
    for path in (busy, dead):
        (path / "sub").mkdir(parents=True)
    with refs.locked("busy"):
        transit.sweep(tmp_path, refs)
    assert busy.is_dir()
    assert not dead.exists()
    transit.sweep(tmp_path, refs)
    assert not busy.exists()


def test_vfs_open_sweeps_only_unlocked_staging_dirs(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "vfs"
    busy = transit.transit_path(home / "dir", "busy", transit.CREATING)
    dead = transit.transit_path(home / "dir", "dead", transit.CREATING)
    busy.mkdir(parents=True)
    dead.mkdir()
    with MountRefs(home).locked("busy"):  # as a live process creating "busy" holds it
        driver = open_driver("vfs", home)
    assert busy.is_dir()
    assert not dead.exists()
    assert driver.ids() == []


def test_overlay2_open_keeps_the_link_of_a_layer_being_created(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "overlay2"
    try:
        open_driver("overlay2", home)
    except NotSupported as exc:
        pytest.skip(str(exc))
    busy = transit.transit_path(home, "busy", transit.CREATING)
    (busy / "diff").mkdir(parents=True)
    os.symlink("../busy/diff", home / "l" / "BUSYLINK")
    os.symlink("../gone/diff", home / "l" / "GONELINK")
    try:
        with MountRefs(home).locked("busy"):
            open_driver("overlay2", home)
        assert busy.is_dir()
        assert os.path.islink(home / "l" / "BUSYLINK")
        assert not os.path.lexists(home / "l" / "GONELINK")
    finally:
        fsutil.remove_tree(home)
