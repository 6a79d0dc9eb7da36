"""The two-phase apply (apply_detached, then finish_apply in order) against apply_diff.

Layers are extracted top first, before any parent holds a file, as the layer store's
pool may do; the finished chain must show exactly the tree the sequential path gives,
whiteouts and opaque directories across layers included. Drivers that build a layer
from its parent keep the sequential path only.
"""

from __future__ import annotations

import io
import pathlib

import pytest

from cowstore.drivers import Driver
from cowstore.errors import NotSupported

from ..support.drivers import open_or_skip
from ..support.tars import E, build, layer_tar
from ..support.trees import dir_tree

BASE = layer_tar(
    {"etc/os-release": b"ID=base", "etc/keep": b"keep", "opt/app/a": b"a", "opt/app/b": b"b", "top": b"t"},
    ("etc", "opt", "opt/app", "var"),
)
# Deletes a file, replaces a directory (opaque), whites out a name no layer ever had.
MIDDLE = build(
    E("etc", "dir", mode=0o755),
    E("etc/.wh.keep"),
    E("opt", "dir", mode=0o755),
    E("opt/app", "dir", mode=0o700),
    E("opt/app/.wh..wh..opq"),
    E("opt/app/c", data=b"c"),
    E("var/.wh.never-there"),
    E("new/.wh.ghost"),
)
# Hides the whole tree below (a root opaque) but for what it brings itself.
ROOT_OPAQUE = build(E(".wh..wh..opq"), E("etc", "dir", mode=0o755), E("etc/only", data=b"only"), E("fresh", data=b"f"))
TOP = build(E(".wh.top"), E("etc/.wh.only"), E("etc/again", data=b"again"), E("fifo", "fifo"))

CHAINS = {
    "whiteouts-and-opaque-dirs": [BASE, MIDDLE, TOP],
    "root-opaque": [BASE, MIDDLE, ROOT_OPAQUE, TOP],
    "single": [BASE],
}


def _sequential(driver: Driver, tars: list[bytes]) -> list[str]:
    ids, parent = [], None
    for number, data in enumerate(tars):
        id = f"seq{number}"
        driver.create(id, parent)
        driver.apply_diff(id, parent, io.BytesIO(data))
        ids.append(id)
        parent = id
    return ids


def _two_phase(driver: Driver, tars: list[bytes]) -> tuple[list[str], list[int]]:
    ids = [f"two{number}" for number in range(len(tars))]
    for number, id in enumerate(ids):
        driver.create(id, ids[number - 1] if number else None)
    sizes = [driver.apply_detached(id, io.BytesIO(data)) for id, data in reversed(list(zip(ids, tars, strict=True)))]
    for number, id in enumerate(ids):
        driver.finish_apply(id, ids[number - 1] if number else None)
    return ids, sizes[::-1]


def _tree(driver: Driver, id: str) -> object:
    try:
        return dir_tree(driver.get(id))
    finally:
        driver.put(id)


@pytest.mark.parametrize("name", ["overlay2", "aufs"])
@pytest.mark.parametrize("chain", list(CHAINS))
def test_two_phase_apply_gives_the_sequential_tree(tmp_path: pathlib.Path, name: str, chain: str) -> None:
    driver = open_or_skip(name, tmp_path / name)
    try:
        assert driver.applies_detached()
        tars = CHAINS[chain]
        sequential = _sequential(driver, tars)
        detached, sizes = _two_phase(driver, tars)
        for number, (seq, two) in enumerate(zip(sequential, detached, strict=True)):
            assert _tree(driver, two) == _tree(driver, seq), f"layer {number}"
            parent = (sequential[number - 1], detached[number - 1]) if number else (None, None)
            assert driver.changes(two, parent[1]) == driver.changes(seq, parent[0])
            assert sizes[number] == driver.diff_size(seq, parent[0])
    finally:
        driver.cleanup()


@pytest.mark.parametrize("name", ["vfs", "btrfs", "devicemapper", "overlay"])
def test_drivers_that_copy_their_parent_keep_the_sequential_path(tmp_path: pathlib.Path, name: str) -> None:
    driver = open_or_skip(name, tmp_path / name)
    try:
        assert not driver.applies_detached()
        driver.create("one", None)
        with pytest.raises(NotSupported):
            driver.apply_detached("one", io.BytesIO(BASE))
        with pytest.raises(NotSupported):
            driver.finish_apply("one", None)
    finally:
        driver.cleanup()
