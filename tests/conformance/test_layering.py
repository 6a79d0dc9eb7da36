"""Layer stacks compared with a flat directory (containerd's snapshotter suite, §5.3),
and the OCI whiteout application sequence (moby's TestApplyLayerWhiteouts).

Each scenario is a list of steps; a step is a function applied to a directory. Every
step is applied both to a flat directory and to a new layer of the driver, built two
ways: written through a container layer's mount, and transported as a changeset
(diff of a container layer, applied to a new image layer) the way commits and
imports store layers. The driver's view of the top layer must equal the flat tree.
"""

from __future__ import annotations

import io
import os
import pathlib
import shutil
import struct
import tarfile
from collections.abc import Callable

import pytest

from cowstore.drivers import Driver

from .helpers import mounted, new_id, snapshot_tree

Step = Callable[[pathlib.Path], None]


def _write(path: pathlib.Path, data: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    path.chmod(mode)


def _move(src: pathlib.Path, dst: pathlib.Path) -> None:
    """rename(2), falling back to copy+delete on EXDEV as `mv` does (overlay lower dirs)."""
    shutil.move(src, dst)


def basic_steps() -> list[Step]:
    def l1(r: pathlib.Path) -> None:
        _write(r / "foo", "foo\n", 0o777)
        (r / "a" / "b" / "c").mkdir(parents=True)

    def l2(r: pathlib.Path) -> None:
        _write(r / "bar", "bar\n")
        _write(r / "foo", "bar\n", 0o777)
        shutil.rmtree(r / "a" / "b")

    return [l1, l2]


def layer_file_update_steps() -> list[Step]:
    def l1(r: pathlib.Path) -> None:
        _write(r / "etc" / "hosts", "mydomain 10.0.0.1")
        _write(r / "etc" / "profile", "PATH=/usr/bin")

    def l2(r: pathlib.Path) -> None:
        _write(r / "etc" / "hosts", "mydomain 10.0.0.2")
        (r / "etc" / "profile").chmod(0o666)
        _write(r / "root" / ".bashrc", "PATH=/usr/sbin:/usr/bin")

    return [l1, l2]


def remove_directory_in_lower_layer_steps() -> list[Step]:
    def l1(r: pathlib.Path) -> None:
        _write(r / "lib" / "hidden", "hidden")

    def l2(r: pathlib.Path) -> None:
        shutil.rmtree(r / "lib")
        _write(r / "lib" / "not-hidden", "visible")

    def l3(r: pathlib.Path) -> None:
        _write(r / "lib" / "newfile", "new")

    return [l1, l2, l3]


def chown_steps() -> list[Step]:
    def l1(r: pathlib.Path) -> None:
        d = r / "opt" / "a" / "b"
        d.mkdir(parents=True, mode=0o700)
        for p in (r / "opt", r / "opt" / "a"):
            p.chmod(0o700)
        _write(d / "file.txt", "hello")

    def l2(r: pathlib.Path) -> None:
        for p in ("opt", "opt/a", "opt/a/b", "opt/a/b/file.txt"):
            os.lchown(r / p, 1, 1)

    return [l1, l2]


def directory_permission_steps() -> list[Step]:
    def l1(r: pathlib.Path) -> None:
        for i in range(1, 6):
            d = r / f"dir{i}"
            d.mkdir(0o700)
            d.chmod(0o700)
            os.lchown(d, i, i)
        _write(r / "dir4" / "file", "x")

    def l2(r: pathlib.Path) -> None:
        os.lchown(r / "dir1", 0, 0)
        shutil.rmtree(r / "dir3")
        os.lchown(r / "dir4", 9, 9)
        os.lchown(r / "dir4" / "file", 9, 9)

    def l3(r: pathlib.Path) -> None:
        (r / "dir3").mkdir(0o755)
        os.lchown(r / "dir3", 7, 7)
        os.lchown(r / "dir5", 8, 8)

    return [l1, l2, l3]


def deleted_files_steps() -> list[Step]:
    def l1(r: pathlib.Path) -> None:
        _write(r / "foo", "foo")
        _write(r / "foobar", "foobar")

    def l2(r: pathlib.Path) -> None:
        (r / "foobar").unlink()

    return [l1, l2, lambda r: None]


def move_file_from_lower_steps() -> list[Step]:
    def l1(r: pathlib.Path) -> None:
        _write(r / "dir1" / "f1", "f1")
        _write(r / "dir2" / "f2", "f2")

    def l2(r: pathlib.Path) -> None:
        _write(r / "dir3" / "f1", "f1-new")
        shutil.rmtree(r / "dir1")
        os.link(r / "dir2" / "f2", r / "dir3" / "f2")
        (r / "dir2" / "f2").unlink()

    return [l1, l2]


def rename_steps() -> list[Step]:
    def l1(r: pathlib.Path) -> None:
        (r / "dir1").mkdir()
        _write(r / "dir1" / "inside", "in")
        _write(r / "somefiles" / "f1", "f1")
        _write(r / "somefiles" / "f2", "f2")

    def l2(r: pathlib.Path) -> None:
        _move(r / "dir1", r / "dir2")
        _write(r / "somefiles" / "f1-overwrite", "new content")
        os.rename(r / "somefiles" / "f1-overwrite", r / "somefiles" / "f1")
        os.rename(r / "somefiles" / "f2", r / "somefiles" / "f3")

    return [l1, l2]


def symlinks_and_specials_steps() -> list[Step]:
    def l1(r: pathlib.Path) -> None:
        _write(r / "usr" / "lib" / "libx.so.1", "elf")
        os.symlink("libx.so.1", r / "usr" / "lib" / "libx.so")
        os.symlink("usr/lib", r / "lib")
        os.mkfifo(r / "fifo")
        os.mknod(r / "null", 0o666 | 0o020000, os.makedev(1, 3))
        _write(r / "cap", "binary", 0o755)
        # cap_net_bind_service, effective: the one xattr Docker's changesets carry
        os.setxattr(r / "cap", "security.capability", struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0))

    def l2(r: pathlib.Path) -> None:
        (r / "lib").unlink()
        os.symlink("/usr/lib", r / "lib")
        os.chmod(r / "usr" / "lib" / "libx.so.1", 0o4755)

    return [l1, l2]


def layers_128_steps() -> list[Step]:
    def bottom(r: pathlib.Path) -> None:
        _write(r / "bottom", "way at the bottom\n")
        _write(r / "overwriteme", "FIRST!\n")
        (r / "addhere").mkdir()
        _write(r / "onlyme" / "bottom", "bottom\n")

    def make(i: int) -> Step:
        def step(r: pathlib.Path) -> None:
            _write(r / "overwriteme", f"{i} WAS HERE!\n")
            _write(r / "addhere" / f"file-{i}", "same\n")
            shutil.rmtree(r / "onlyme")
            _write(r / "onlyme" / f"file-{i}", "only me!\n")

        return step

    return [bottom] + [make(i) for i in range(1, 128)]


SCENARIOS = {
    "basic": basic_steps,
    "layer_file_update": layer_file_update_steps,
    "remove_directory_in_lower_layer": remove_directory_in_lower_layer_steps,
    "chown": chown_steps,
    "directory_permission_on_commit": directory_permission_steps,
    "deleted_files_in_child": deleted_files_steps,
    "move_file_from_lower_layer": move_file_from_lower_steps,
    "rename": rename_steps,
    "symlinks_and_special_files": symlinks_and_specials_steps,
}


def _build(driver: Driver, steps: list[Step], flat: pathlib.Path, via_diff: bool, check_each: bool) -> list[str]:
    """Apply steps to `flat` and to a chain of driver layers; return the created ids."""
    created: list[str] = []
    parent: str | None = None
    for step in steps:
        step(flat)
        container = new_id()
        driver.create_rw(container, parent)
        created.append(container)
        with mounted(driver, container) as root:
            step(root)
        top = container
        if via_diff:
            image = new_id()
            driver.create(image, parent)
            created.append(image)
            with driver.diff(container, parent) as stream:
                driver.apply_diff(image, parent, stream)
            top = image
        if check_each:
            with mounted(driver, top) as root:
                assert snapshot_tree(root) == snapshot_tree(flat)
        parent = top
    return created


def _run(driver: Driver, tmp_path: pathlib.Path, steps: list[Step], via_diff: bool, check_each: bool = True) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    created = _build(driver, steps, flat, via_diff, check_each)
    try:
        with mounted(driver, created[-1]) as root:
            assert snapshot_tree(root) == snapshot_tree(flat)
    finally:
        for layer in reversed(created):
            driver.remove(layer)


@pytest.mark.parametrize("via_diff", [False, True], ids=["mounted", "via_diff"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario_matches_flat_directory(driver: Driver, tmp_path: pathlib.Path, scenario: str, via_diff: bool) -> None:
    _run(driver, tmp_path, SCENARIOS[scenario](), via_diff)


def test_128_layers_match_flat_directory(driver: Driver, tmp_path: pathlib.Path) -> None:
    _run(driver, tmp_path, layers_128_steps(), via_diff=True, check_each=False)


def _layer_tar(entries: list[str]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in entries:
            info = tarfile.TarInfo(name.rstrip("/"))
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(b""))
    buf.seek(0)
    return buf


def _list_tree(root: pathlib.Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        prefix = "" if rel == "." else rel + "/"
        found += [prefix + d + "/" for d in dirnames if not (d == "lost+found" and not prefix)]
        found += [prefix + f for f in filenames]
        dirnames[:] = [d for d in dirnames if not (d == "lost+found" and not prefix)]
    return sorted(found)


WHITEOUT_SEQUENCE = [
    (
        ".baz bar/ bar/bax bar/bay/ baz foo/ foo/.abc foo/.bcd/ foo/.bcd/a foo/cde/ foo/cde/def foo/cde/efg foo/fgh foobar",  # noqa: E501
        ".baz bar/ bar/bax bar/bay/ baz foo/ foo/.abc foo/.bcd/ foo/.bcd/a foo/cde/ foo/cde/def foo/cde/efg foo/fgh foobar",  # noqa: E501
    ),
    (
        ".bay .wh.baz foo/ foo/.bce foo/.wh..wh..opq foo/cde/ foo/cde/efg",
        ".bay .baz bar/ bar/bax bar/bay/ foo/ foo/.bce foo/cde/ foo/cde/efg foobar",
    ),
    (
        ".bay .wh..baz .wh.foobar foo/ foo/.abc foo/.wh.cde bar/",
        ".bay bar/ bar/bax bar/bay/ foo/ foo/.abc foo/.bce",
    ),
    (".abc .wh..wh..opq foobar", ".abc foobar"),
]


def test_apply_layer_whiteouts(driver: Driver) -> None:
    parent: str | None = None
    created = []
    try:
        for entries, expected in WHITEOUT_SEQUENCE:
            layer = new_id()
            driver.create(layer, parent)
            created.append(layer)
            driver.apply_diff(layer, parent, _layer_tar(entries.split()))
            with mounted(driver, layer) as root:
                assert _list_tree(root) == sorted(expected.split())
            parent = layer
    finally:
        for layer in reversed(created):
            driver.remove(layer)
