"""vfs specifics: size limits through xfs project quotas, changes since the copy."""

from __future__ import annotations

import pathlib

from cowstore.archive import changes_dirs
from cowstore.drivers import open_driver
from cowstore.host import quota


def test_every_limited_layer_gets_its_own_project(xfs_mount: pathlib.Path) -> None:
    driver = open_driver("vfs", xfs_mount / "vfs", {"size": "8M"})
    for id in ("a", "b", "c"):
        driver.create_rw(id, None)
    projects = [quota.project_id(driver.get(id)) for id in ("a", "b", "c")]
    assert len(set(projects)) == 3
    assert 0 not in projects


def test_changes_against_the_parent_it_was_copied_from_skip_untouched_entries(tmp_path: pathlib.Path) -> None:
    driver = open_driver("vfs", tmp_path / "vfs")
    driver.create("base", None)
    root = driver.get("base")
    for directory in ("etc", "usr/bin", "var"):
        (root / directory).mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root")
    (root / "usr" / "bin" / "sh").write_text("#!")
    (root / "var" / "gone").write_text("x")
    driver.create_rw("c", "base")
    note = driver.refs.note("c", "copied")
    assert note is not None and note.endswith(" base")
    top = driver.get("c")
    (top / "etc" / "passwd").write_text("toor")
    (top / "var" / "gone").unlink()
    (top / "usr" / "bin" / "new").write_text("n")
    expected = ["C /etc", "C /etc/passwd", "C /usr", "C /usr/bin", "A /usr/bin/new", "C /var", "D /var/gone"]
    assert [str(c) for c in driver.changes("c", "base")] == expected
    assert [str(c) for c in changes_dirs(top, root)] == expected  # what comparing everything finds
    driver.create_rw("d", "c")
    assert driver.changes("d", "c") == []
    assert driver.changes("d", "base") == driver.changes("c", "base")  # not its parent: the whole comparison
