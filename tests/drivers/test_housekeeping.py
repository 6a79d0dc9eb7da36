"""Start-up sweeps delete what crashed processes left, never what live ones are building."""

from __future__ import annotations

import os
import pathlib

import pytest

from cowstore import fsutil
from cowstore.drivers import housekeeping, open_driver
from cowstore.drivers.refcount import MountRefs
from cowstore.errors import NotSupported


def test_transit_names_round_trip() -> None:
    path = housekeeping.transit_path(pathlib.Path("/x"), "a-b.c", housekeeping.CREATING)
    assert path.name.startswith(".a-b.c-") and path.name.endswith("-creating")
    assert housekeeping.transit_id(path.name) == "a-b.c"
    for other in ("a-b.c", ".a-1234-other", ".-1234-creating", "...-1234-removing", ".hidden"):
        assert housekeeping.transit_id(other) is None


def test_sweep_leaves_a_locked_staging_dir_alone(tmp_path: pathlib.Path) -> None:
    refs = MountRefs(tmp_path)
    busy = housekeeping.transit_path(tmp_path, "busy", housekeeping.CREATING)
    dead = housekeeping.transit_path(tmp_path, "dead", housekeeping.REMOVING)
    for path in (busy, dead):
        (path / "sub").mkdir(parents=True)
    with refs.locked("busy"):
        housekeeping.sweep(tmp_path, refs)
    assert busy.is_dir()
    assert not dead.exists()
    housekeeping.sweep(tmp_path, refs)
    assert not busy.exists()


def test_vfs_open_sweeps_only_unlocked_staging_dirs(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "vfs"
    busy = housekeeping.transit_path(home / "dir", "busy", housekeeping.CREATING)
    dead = housekeeping.transit_path(home / "dir", "dead", housekeeping.CREATING)
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
    busy = housekeeping.transit_path(home, "busy", housekeeping.CREATING)
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
