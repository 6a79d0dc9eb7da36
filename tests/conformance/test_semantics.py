"""The decisions of docs/semantics.md hold on every driver.

- A layer never writes through a symlink it created: apply_diff refuses it (vfs and
  devicemapper used to follow the link inside the root, overlay2 and aufs to make a
  real directory).
- A layer may not hard-link a file of a lower layer: apply_diff refuses it (vfs, overlay
  and devicemapper, which apply onto a copy or view of the parent, used to accept it).
- A container file named `.wh.*` is an addition in `changes`, never a deletion (and the
  layer store refuses to commit it: tests/containers/test_commit_limits.py).
"""

from __future__ import annotations

import io
import os

import pytest

from cowstore.drivers import Driver
from cowstore.errors import ArchiveError

from ..support.tars import E, build
from .helpers import mounted, new_id


def _base(driver: Driver) -> str:
    base = new_id()
    driver.create(base, None)
    driver.apply_diff(base, None, io.BytesIO(build(E("etc", "dir", mode=0o755), E("etc/passwd", data=b"root"))))
    return base


def test_layer_writing_through_its_own_symlink_is_refused(driver: Driver) -> None:
    base, layer = _base(driver), new_id()
    driver.create(layer, base)
    tar = build(E("b", "dir", mode=0o755), E("a", "symlink", target="b"), E("a/f", data=b"one"), E("b/f", data=b"two"))
    try:
        with pytest.raises(ArchiveError, match="own layer"):
            driver.apply_diff(layer, base, io.BytesIO(tar))
    finally:
        driver.remove(layer)
        driver.remove(base)


def test_hard_link_to_a_lower_layers_file_is_refused(driver: Driver) -> None:
    base, layer = _base(driver), new_id()
    driver.create(layer, base)
    try:
        with pytest.raises(ArchiveError, match="not in layer"):
            driver.apply_diff(layer, base, io.BytesIO(build(E("passwd", "link", target="etc/passwd"))))
        ok = new_id()
        driver.create(ok, base)
        tar = build(E("etc", "dir", mode=0o755), E("etc/group", data=b"g"), E("group", "link", target="etc/group"))
        driver.apply_diff(ok, base, io.BytesIO(tar))
        with mounted(driver, ok) as root:
            assert os.stat(root / "group").st_ino == os.stat(root / "etc" / "group").st_ino
        driver.remove(ok)
    finally:
        driver.remove(layer)
        driver.remove(base)


def test_container_file_named_like_a_whiteout_is_an_addition(driver: Driver) -> None:
    base, rw = _base(driver), new_id()
    driver.create(rw, base)
    try:
        with mounted(driver, rw) as root:
            try:
                (root / ".wh.etc").write_bytes(b"just a file")
            except OSError:
                pytest.skip(f"{driver.name}: the union refuses .wh. names itself")
            assert (root / "etc" / "passwd").read_bytes() == b"root"
        changes = {str(c) for c in driver.changes(rw, base)}
        assert "A /.wh.etc" in changes and not any(c.startswith("D ") for c in changes), changes
    finally:
        driver.remove(rw)
        driver.remove(base)
