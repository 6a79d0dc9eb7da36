"""The mount table: one target looked up in the raw table, as the whole parsed table says."""

from __future__ import annotations

import pathlib

import pytest

from cowstore.host import mounts


def test_find_mount_gives_the_topmost_mount_of_exactly_that_target(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "a b\\c"
    target.mkdir()
    (tmp_path / "a").mkdir()
    mounts.mount("first", target, "tmpfs")
    try:
        mounts.mount("second", target, "tmpfs")
        try:
            found = mounts.find_mount(target)
            assert found is not None and (found.target, found.source) == (str(target), "second")
            assert [r for r in mounts.mount_table() if r.target == str(target)][-1] == found
            assert mounts.is_mountpoint(target) and not mounts.is_mountpoint(tmp_path / "a")
        finally:
            mounts.umount(target, 0)
        found = mounts.find_mount(target)
        assert found is not None and found.source == "first"
    finally:
        mounts.umount(target, 0)
    assert mounts.find_mount(target) is None


def test_escape_is_the_reverse_of_the_table_spelling() -> None:
    assert mounts._escape("/a b\tc\nd\\e") == rb"/a\040b\011c\012d\134e"
    assert mounts._unescape(mounts._escape("/x y\\z")) == "/x y\\z"


def test_device_mount_reads_the_table_only_for_another_device(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target, plain = tmp_path / "mnt", tmp_path / "plain"
    target.mkdir()
    plain.mkdir()
    reads: list[int] = []
    read_table = mounts._read_table
    monkeypatch.setattr(mounts, "_read_table", lambda: reads.append(1) or read_table())
    assert mounts.device_mount(plain) is None and mounts.device_mount(tmp_path / "missing") is None
    assert reads == []  # same device as the parent, or nothing there: no table read
    mounts.mount("dm", target, "tmpfs")
    try:
        found = mounts.device_mount(target)
        assert found is not None and (found.target, found.source) == (str(target), "dm")
        assert mounts.device_mount("/") == mounts.find_mount("/")  # the root is its own parent
    finally:
        mounts.umount(target, 0)
    assert mounts.device_mount(target) is None
