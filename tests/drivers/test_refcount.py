"""Mount counts kept as the size of sparse lock files, and the notes drivers keep on them."""

from __future__ import annotations

import os
import pathlib

from cowstore.drivers.common.refcount import MountRefs


def test_a_count_takes_no_block_and_notes_live_with_it(tmp_path: pathlib.Path) -> None:
    refs = MountRefs(tmp_path)
    with refs.locked("a") as ref:
        assert ref.increment(False) == 1
        assert ref.increment(True) == 2
        refs.set_note("a", "lower", "l/ABC")
    os.sync()
    assert os.stat(refs.dir / "a").st_blocks == 0
    with refs.locked("a") as ref:
        assert ref.value() == 2
        assert ref.decrement(True) == 1
    assert refs.note("a", "lower") == "l/ABC" and refs.note("a", "link") is None
    refs.drop_note("a", "lower")
    assert refs.note("a", "lower") is None
    refs.forget("a")
    assert refs.note("a", "lower") is None


def test_a_count_written_as_text_by_an_older_version_is_read(tmp_path: pathlib.Path) -> None:
    refs = MountRefs(tmp_path)
    (refs.dir / "old").write_text(f"{3:<20}")
    with refs.locked("old") as ref:
        assert ref.value() == 3
        assert ref.decrement(True) == 2
        assert ref.value() == 2
