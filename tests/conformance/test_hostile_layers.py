"""Hostile layer tars through every driver's apply_diff, native paths included.

Each tar is applied to a new layer on top of a parent (so overlay2's and aufs' native
apply is the one exercised). The tar must be refused with an ArchiveError, or applied
with every write inside the layer; a sentinel tree outside must not change.
"""

from __future__ import annotations

import io
import pathlib

import pytest

from cowstore.drivers import Driver
from cowstore.errors import ArchiveError

from ..archive.test_hostile import fingerprint
from ..support.tars import E, build
from .helpers import mounted, new_id


def cases(sentinel: pathlib.Path) -> dict[str, bytes]:
    s = str(sentinel)
    return {
        "dotdot": build(E("../../../../escape")),
        "normalized-out": build(E("a/../../escape")),
        "absolute": build(E(f"{s}/file", data=b"pwned")),
        "symlink-root-write": build(E("link", kind="symlink", target="/"), E(f"link{s}/file", data=b"pwned")),
        "symlink-out-write": build(E("out", kind="symlink", target=s), E("out/file", data=b"pwned")),
        "symlink-replaced": build(E("x", kind="symlink", target=f"{s}/file"), E("x", data=b"overwrite")),
        "symlink-loop": build(E("a", kind="symlink", target="b"), E("b", kind="symlink", target="a"), E("a/f")),
        "hardlink-out": build(E("h", kind="link", target=f"../../../../{s}/file")),
        "hardlink-abs": build(E("h", kind="link", target=f"{s}/file")),
        "hardlink-via-symlink": build(E("d", kind="symlink", target=s), E("h", kind="link", target="d/file")),
        "whiteout-via-symlink": build(E("w", kind="symlink", target=s), E("w/.wh.victim")),
        "opaque-via-symlink": build(E("o", kind="symlink", target=s), E("o/.wh..wh..opq")),
        "dot-whiteout": build(E(".wh..")),
        "overlay-whiteout-device": build(E("dev0", kind="chr", dev=(0, 0))),
        "overlay-xattr": build(E("d", kind="dir", pax={"SCHILY.xattr.trusted.overlay.opaque": "y"})),
        "aufs-metadata": build(E(".wh..wh.plnk", kind="dir"), E(".wh..wh.plnk/1.2", data=b"x")),
    }


CASES = list(cases(pathlib.Path("/x")))


@pytest.mark.parametrize("case", CASES)
def test_hostile_layer_contained(driver: Driver, tmp_path: pathlib.Path, case: str) -> None:
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "file").write_text("precious")
    (sentinel / "victim").write_text("victim")
    before = fingerprint(sentinel)
    base, layer = new_id(), new_id()
    driver.create(base, None)
    with mounted(driver, base) as root:
        (root / "keep").write_text("base")
    driver.create(layer, base)
    try:
        try:
            driver.apply_diff(layer, base, io.BytesIO(cases(sentinel)[case]))
        except ArchiveError:
            pass
        else:
            with mounted(driver, layer) as root:
                assert (root / "keep").read_text() == "base"
                assert not (root / ".wh..wh.plnk").exists()
        assert fingerprint(sentinel) == before
        assert not (tmp_path / "escape").exists()
    finally:
        driver.remove(layer)
        driver.remove(base)
