"""moby's graphtest cases (reference §5.2), run against every driver."""

from __future__ import annotations

import errno
import io
import os
import stat
import tarfile

import pytest

from cowstore.archive.changes import Change
from cowstore.drivers import Driver
from cowstore.errors import InvalidArgument, NotFound, NotSupported
from cowstore.host import mounts

from ..support.tars import layer_tar
from .helpers import (
    add_file,
    add_many_files,
    add_many_layers,
    change_many_files,
    check_file,
    check_many_files,
    check_many_layers,
    create_base,
    mounted,
    new_id,
    read_dir,
    verify_base,
)


def test_create_empty(driver: Driver) -> None:
    id = new_id()
    driver.create(id, None)
    assert driver.exists(id)
    with mounted(driver, id) as root:
        st = os.stat(root)
        assert stat.S_ISDIR(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o755
        assert (st.st_uid, st.st_gid) == (0, 0)
        assert read_dir(root) == []
    driver.remove(id)
    assert not driver.exists(id)


def test_create_base(driver: Driver) -> None:
    id = new_id()
    create_base(driver, id)
    verify_base(driver, id)
    driver.remove(id)


def test_create_snap(driver: Driver) -> None:
    base, snap = new_id(), new_id()
    create_base(driver, base)
    driver.create(snap, base)
    verify_base(driver, snap)
    driver.remove(snap)
    driver.remove(base)


def test_create_with_missing_parent_fails(driver: Driver) -> None:
    with pytest.raises(NotFound):
        driver.create(new_id(), "does-not-exist")


def test_deep_layer_read_128(driver: Driver) -> None:
    base = new_id()
    driver.create(base, None)
    add_file(driver, base, "testfile.txt", b"test content")
    top, created = add_many_layers(driver, base, 128)
    try:
        check_many_layers(driver, top, 128)
        check_file(driver, top, "testfile.txt", b"test content")
    finally:
        for layer in reversed(created):
            driver.remove(layer)
        driver.remove(base)


def test_diff_apply(driver: Driver) -> None:
    count = 10
    base, upper, target = new_id(), new_id(), new_id()
    driver.create(base, None)
    add_many_files(driver, base, count, 3)
    add_file(driver, base, "file-remove.txt", b"This file should get removed in upper!")
    with mounted(driver, base) as root:
        (root / "var" / "lib").mkdir(parents=True)
    driver.create(upper, base)
    add_many_files(driver, upper, count, 6)
    with mounted(driver, upper) as root:
        (root / "file-remove.txt").unlink()
        (root / "var" / "lib").rmdir()
    diff_size = driver.diff_size(upper, None)
    driver.create(target, base)
    check_many_files(driver, target, count, 3)
    check_file(driver, target, "file-remove.txt", b"This file should get removed in upper!")
    with driver.diff(upper, base) as arch:
        size = driver.apply_diff(target, base, arch)
    assert size == count * 64
    check_many_files(driver, target, count, 6)
    with mounted(driver, target) as root:
        assert not (root / "file-remove.txt").exists()
        assert not (root / "var" / "lib").exists()
        assert (root / "var").is_dir()
    assert diff_size >= size
    for layer in (target, upper, base):
        driver.remove(layer)


def test_changes(driver: Driver) -> None:
    base, upper = new_id(), new_id()
    driver.create(base, None)
    add_many_files(driver, base, 20, 3)
    driver.create(upper, base)
    expected = change_many_files(driver, upper, 20, 6)
    actual = driver.changes(upper, base)
    assert len(actual) == 21
    assert sorted(actual) == sorted(expected)
    driver.remove(upper)
    driver.remove(base)


def test_diff_size_counts_only_changes(driver: Driver) -> None:
    base, upper = new_id(), new_id()
    driver.create(base, None)
    add_file(driver, base, "file1", b"x" * 1024)
    driver.create(upper, base)
    assert driver.diff_size(upper, base) == 0
    add_file(driver, upper, "file2", b"Mutable contents")
    assert driver.diff_size(upper, base) == 16
    assert driver.diff_size(base, None) == 1024
    driver.remove(upper)
    driver.remove(base)


def test_set_quota(driver: Driver) -> None:
    base, layer = new_id(), new_id()
    create_base(driver, base)
    try:
        driver.create_rw(layer, base, storage_opts={"size": "50M"})
    except NotSupported as exc:
        driver.remove(base)
        pytest.skip(f"quota not supported: {exc}")
    try:
        with mounted(driver, layer) as root:
            (root / "smallfile").write_bytes(b"\0" * (25 * 1024 * 1024))
            with pytest.raises(OSError) as info:
                with open(root / "bigfile", "wb") as fh:
                    for _ in range(50):
                        fh.write(os.urandom(1024 * 1024))
                    fh.flush()
                    os.fsync(fh.fileno())
            assert info.value.errno in (errno.EDQUOT, errno.ENOSPC)
    finally:
        driver.remove(layer)
        driver.remove(base)


def test_two_gets_need_two_puts(driver: Driver) -> None:
    base, layer = new_id(), new_id()
    driver.create(base, None)
    add_file(driver, base, "hello", b"world")
    driver.create_rw(layer, base)
    first = driver.get(layer)
    second = driver.get(layer)
    assert first == second
    was_mount = mounts.is_mountpoint(first)
    driver.put(layer)
    assert (first / "hello").read_bytes() == b"world"
    if was_mount:
        assert mounts.is_mountpoint(first)
    driver.put(layer)
    if was_mount:
        assert not mounts.is_mountpoint(first)
    driver.remove(layer)
    driver.remove(base)


def test_remove_while_mounted(driver: Driver) -> None:
    base, layer = new_id(), new_id()
    driver.create(base, None)
    driver.create_rw(layer, base)
    path = driver.get(layer)
    driver.remove(layer)
    assert not driver.exists(layer)
    assert not mounts.is_mountpoint(path)
    driver.remove(base)


def test_status_and_metadata_are_strings(driver: Driver) -> None:
    layer = new_id()
    driver.create(layer, None)
    for key, value in driver.status():
        assert isinstance(key, str) and isinstance(value, str)
    for key, value in driver.metadata(layer).items():
        assert isinstance(key, str) and isinstance(value, str)
    driver.remove(layer)


def test_ids_lists_exactly_the_layers(driver: Driver) -> None:
    base, child = new_id(), new_id()
    driver.create(base, None)
    driver.create_rw(child, base)
    try:
        listed = set(driver.ids())
    except NotSupported as exc:
        pytest.skip(str(exc))
    finally:
        driver.remove(child)
        driver.remove(base)
    assert {base, child} <= listed
    assert not {base, child} & set(driver.ids())


def test_remove_of_an_unknown_layer_is_not_an_error(driver: Driver) -> None:
    id = new_id()
    driver.remove(id)
    assert not driver.exists(id)


def test_checked_diff_checks_the_changes_then_writes_the_diff(driver: Driver) -> None:
    """A commit's one pass: `check` sees what changes and diff_size say, the tar is diff's,
    and a check that refuses leaves no tar and nothing mounted."""
    base, upper = new_id(), new_id()
    driver.create(base, None)
    add_many_files(driver, base, 5, 3)
    driver.create(upper, base)
    expected = change_many_files(driver, upper, 5, 6)
    seen: list[tuple[list[Change], int]] = []
    with driver.checked_diff(upper, base, lambda changes, size: seen.append((changes, size))) as arch:
        names = sorted(member.name for member in tarfile.open(fileobj=arch, mode="r|"))
    with driver.diff(upper, base) as arch:
        assert names == sorted(member.name for member in tarfile.open(fileobj=arch, mode="r|"))
    assert seen == [(driver.changes(upper, base), driver.diff_size(upper, base))]
    assert sorted(seen[0][0]) == sorted(expected)

    class Refused(InvalidArgument):
        pass

    def refuse(changes: list[Change], size: int) -> None:
        raise Refused(f"{len(changes)} changes")

    before = mounts.mounts_under(driver.home)
    with pytest.raises(Refused):
        driver.checked_diff(upper, base, refuse)
    assert mounts.mounts_under(driver.home) == before
    driver.remove(upper)
    driver.remove(base)


def test_a_rewrite_that_keeps_size_and_mtime_is_a_change(driver: Driver) -> None:
    """Docker's rule (size and mtime) misses such a rewrite: here a layer applied from a tar
    (whole-second mtimes, all alike) and a container that rewrites a file and puts its
    mtime back must both show it, and their diffs must carry the new bytes."""
    base, image, container = new_id(), new_id(), new_id()
    driver.create(base, None)
    driver.apply_diff(base, None, io.BytesIO(layer_tar({"f": b"aaaa", "g": b"keep"})))
    driver.create(image, base)
    driver.apply_diff(image, base, io.BytesIO(layer_tar({"f": b"bbbb"})))
    assert Change("/f", "C") in driver.changes(image, base)
    with driver.diff(image, base) as arch, tarfile.open(fileobj=arch, mode="r|") as tar:
        found = {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    assert found == {"f": b"bbbb"}
    driver.create_rw(container, image)
    with mounted(driver, container) as root:
        before = os.stat(root / "g")
        (root / "g").write_bytes(b"KEEP")
        os.utime(root / "g", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert Change("/g", "C") in driver.changes(container, image)
    for layer in (container, image, base):
        driver.remove(layer)
