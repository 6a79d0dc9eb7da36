"""changes_dirs against a tree's copy: what the copy time lets it skip, and what it must still find."""

from __future__ import annotations

import os
import pathlib
import shutil
import time

from cowstore.archive.changes import Change, changes_dirs

_STAMP = (1_600_000_000_000_000_000,) * 2
_COARSE = 5  # CLOCK_REALTIME_COARSE, the clock of inode times


def test_a_touched_rewrite_that_keeps_size_and_mtime_is_found_by_its_content(tmp_path: pathlib.Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    (old / "d").mkdir(parents=True)
    for name, data in (("rewritten", b"aaaa"), ("same", b"cccc"), ("untouched", b"dddd")):
        (old / "d" / name).write_bytes(data)
        os.utime(old / "d" / name, ns=_STAMP)
    shutil.copytree(old, new, copy_function=shutil.copy2)
    time.sleep(0.02)  # a coarse tick: the copy's ctimes are older than the stamp
    copied = time.clock_gettime_ns(_COARSE)
    time.sleep(0.02)
    for name, data in (("rewritten", b"bbbb"), ("same", b"cccc")):
        (new / "d" / name).write_bytes(data)
        os.utime(new / "d" / name, ns=_STAMP)
    assert changes_dirs(new, old) == []  # Docker's rule alone: same size, same mtime
    assert changes_dirs(new, old, copied_before=copied) == [Change("/d", "C"), Change("/d/rewritten", "C")]
