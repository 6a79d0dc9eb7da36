"""overlay2 on the real kernel overlayfs: layout, deep chains, native diff, quotas."""

from __future__ import annotations

import io
import os
import pathlib
import stat
import tarfile
from collections.abc import Iterator

import pytest

from cowstore.archive.whiteouts import is_overlay_whiteout
from cowstore.drivers import open_driver
from cowstore.drivers.naive import NaiveDiffDriver
from cowstore.drivers.overlay import Overlay2Driver, upperdir
from cowstore.drivers.overlay import kernel as ovl
from cowstore.errors import ArchiveError, InvalidOption, MaxDepthExceeded, NotSupported
from cowstore.host import fsutil, mounts

from ...support.drivers import opened

pytestmark = pytest.mark.skipif(not fsutil.kernel_has_fs("overlay"), reason="kernel has no overlay filesystem")


def _open(home: pathlib.Path, options: dict[str, str] | None = None) -> Overlay2Driver:
    try:
        drv = open_driver("overlay2", home, options)
    except NotSupported as exc:
        pytest.skip(str(exc))
    assert isinstance(drv, Overlay2Driver)
    return drv


@pytest.fixture
def driver(tmp_path: pathlib.Path) -> Iterator[Overlay2Driver]:
    with opened(Overlay2Driver, "overlay2", tmp_path / "overlay2") as drv:
        yield drv


@pytest.fixture
def classic(tmp_path: pathlib.Path) -> Iterator[Overlay2Driver]:
    with opened(Overlay2Driver, "overlay2", tmp_path / "classic", {"overlay2.mount_api": "classic"}) as drv:
        yield drv


@pytest.fixture
def docker_layout(tmp_path: pathlib.Path) -> Iterator[Overlay2Driver]:
    with opened(Overlay2Driver, "overlay2", tmp_path / "docker", {"overlay2.layout": "docker"}) as drv:
        yield drv


def _tar(files: dict[str, bytes | None]) -> io.BytesIO:
    """A layer tar: bytes are regular files, None a directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def _chain(drv: Overlay2Driver, count: int) -> list[str]:
    """`count` layers, each adding `layer-<i>` and overwriting `top` (through native apply)."""
    ids: list[str] = []
    parent = None
    for i in range(count):
        id = f"layer{i}"
        drv.create(id, parent)
        drv.apply_diff(id, parent, _tar({f"layer-{i}": str(i).encode(), "top": str(i).encode()}))
        ids.append(id)
        parent = id
    return ids


def test_layout_matches_docker(docker_layout: Overlay2Driver) -> None:
    driver = docker_layout
    driver.create("base", None)
    driver.create_rw("c", "base")
    home = driver.home
    base_link = (home / "base" / "link").read_text()
    assert len(base_link) == 26 and base_link.isupper()
    assert os.readlink(home / "l" / base_link) == "../base/diff"
    assert not (home / "base" / "lower").exists()
    assert (home / "c" / "lower").read_text() == f"l/{base_link}"
    assert (home / "base" / "committed").exists()
    assert not (home / "c" / "committed").exists()
    assert (home / "c" / "work").is_dir() and (home / "c" / "diff").is_dir()
    assert driver.get("base") == home / "base" / "diff"
    driver.put("base")
    meta = driver.metadata("c")
    assert meta == {
        "WorkDir": str(home / "c" / "work"),
        "MergedDir": str(home / "c" / "merged"),
        "UpperDir": str(home / "c" / "diff"),
        "LowerDir": str(home / "base" / "diff"),
    }
    assert "LowerDir" not in driver.metadata("base")
    assert dict(driver.status())["Native Overlay Diff"] == "true"
    driver.remove("c")
    driver.remove("base")
    assert sorted(os.listdir(home)) == ["l", "merged", "mountpoints"]
    assert os.listdir(home / "l") == []


def test_compact_container_layer_is_its_upper_dir(driver: Overlay2Driver) -> None:
    driver.create("base", None)
    driver.apply_diff("base", None, _tar({"etc": None, "etc/passwd": b"root"}))
    driver.create_rw("c", "base")
    home = driver.home
    layer = home / "c"
    assert os.listdir(layer) == []
    assert driver.refs.note("c", "lower") == f"l/{(home / 'base' / 'link').read_text()}"
    assert os.lstat(home / "mountpoints" / "c").st_blocks == 0
    root = driver.get("c")
    try:
        assert root == home / "merged" / "c"
        (root / "new").write_text("x")
        assert (root / "etc" / "passwd").read_text() == "root"
        assert os.listdir(layer) == ["new"]
        assert os.lstat(home / "mountpoints" / "c").st_blocks == 0
        assert driver.metadata("c") == {
            "WorkDir": str(root),
            "MergedDir": str(root),
            "UpperDir": str(layer),
            "LowerDir": str(home / "base" / "diff"),
        }
        assert [c.path for c in driver.changes("c", "base")] == ["/new"]
    finally:
        driver.put("c")
    assert not (home / "merged" / "c").exists()
    driver.create("child", "c")  # a compact parent gets a short link, and is mounted read-only
    link = driver.refs.note("c", "link")
    assert link is not None and os.readlink(home / "l" / link) == "../c"
    assert (home / "child" / "lower").read_text().split(":")[0] == f"l/{link}"
    with pytest.raises(OSError):
        (driver.get("c") / "more").write_text("x")
    driver.put("c")
    top = driver.get("child")
    try:
        assert (top / "new").read_text() == "x" and (top / "etc" / "passwd").exists()
    finally:
        driver.put("child")
    driver.remove("child")
    driver.remove("c")
    driver.remove("base")
    assert sorted(os.listdir(home)) == ["l", "merged", "mountpoints"]
    assert os.listdir(home / "l") == [] and os.listdir(home / "merged") == []


def test_fill_writes_into_the_upper_dir_without_a_mount(driver: Overlay2Driver) -> None:
    driver.create("base", None)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("etc")
        info.type, info.mode, info.uid = tarfile.DIRTYPE, 0o700, 7
        tar.addfile(info)
    buf.seek(0)
    driver.apply_diff("base", None, buf)
    driver.create_rw("init", "base")
    driver.fill("init", lambda root: ((root / "etc").mkdir(), (root / "etc" / "hosts").touch()))
    assert mounts.mounts_under(driver.home) == []
    root = driver.get("init")
    try:
        etc = os.stat(root / "etc")
        assert (stat.S_IMODE(etc.st_mode), etc.st_uid) == (0o700, 7)  # the image's directory, as a copy-up keeps it
        assert (root / "etc" / "hosts").is_file()
    finally:
        driver.put("init")


def test_reserved_ids_are_refused(driver: Overlay2Driver) -> None:
    for bad in ("l", "mountpoints", "../x", ".hidden", ""):
        with pytest.raises(InvalidOption):
            driver.create(bad, None)
        assert not driver.exists(bad)


def test_500_lower_layers_read_and_the_501st_is_max_depth_exceeded(driver: Overlay2Driver) -> None:
    if driver.classic:
        pytest.skip("kernel lacks fsconfig lowerdir+ (Linux 6.8+)")
    ids = _chain(driver, 500)
    driver.create_rw("container", ids[-1])
    assert len(driver.metadata("container")["LowerDir"].split(":")) == 500
    root = driver.get("container")
    try:
        assert (root / "top").read_text() == "499"
        for i in (0, 1, 250, 498, 499):
            assert (root / f"layer-{i}").read_text() == str(i)
        assert len([n for n in os.listdir(root) if n.startswith("layer-")]) == 500
    finally:
        driver.put("container")
    # A committed layer mounts read-only with its own diff as the top lower: 500 lowers.
    top = driver.get(ids[-1])
    try:
        assert (top / "top").read_text() == "499"
    finally:
        driver.put(ids[-1])
    with pytest.raises(MaxDepthExceeded, match="max depth exceeded"):
        driver.create("too-deep", "container")
    assert not driver.exists("too-deep")
    assert not (driver.home / "container" / "committed").exists()
    assert len(os.listdir(driver.home / "l")) == 501


def test_classic_mount_reads_128_and_refuses_the_129th(classic: Overlay2Driver) -> None:
    ids = _chain(classic, 129)
    root = classic.get(ids[-1])
    try:
        assert (root / "top").read_text() == "128"
        assert (root / "layer-0").read_text() == "0"
    finally:
        classic.put(ids[-1])
    with pytest.raises(MaxDepthExceeded):
        classic.create("layer129", ids[-1])


def test_classic_mount_checks_the_option_length_first(tmp_path: pathlib.Path) -> None:
    lowers = []
    for i in range(40):
        d = tmp_path / ("x" * 100) / f"lower{i}"
        d.mkdir(parents=True)
        lowers.append(str(d))
    target = tmp_path / "target"
    target.mkdir()
    spec = ovl.OverlaySpec(tmp_path, lowers, options=ovl.mount_options())
    assert len(ovl.classic_data(spec)) > os.sysconf("SC_PAGESIZE")
    with pytest.raises(MaxDepthExceeded, match="bytes of mount options"):
        ovl.mount_overlay(spec, target, classic=True)
    assert not mounts.is_mountpoint(target)
    if ovl.new_mount_api():
        ovl.mount_overlay(spec, target)
        try:
            assert mounts.is_mountpoint(target)
        finally:
            ovl.unmount(target)


def test_two_gets_need_two_puts_and_commit_is_read_only(driver: Overlay2Driver) -> None:
    driver.create("base", None)
    driver.apply_diff("base", None, _tar({"f": b"base"}))
    driver.create("img", "base")
    driver.create_rw("c", "img")
    merged = driver.get("c")
    assert driver.get("c") == merged
    driver.put("c")
    assert mounts.is_mountpoint(merged) and (merged / "f").read_bytes() == b"base"
    driver.put("c")
    assert not mounts.is_mountpoint(merged) and not merged.exists()
    ro = driver.get("img")  # has a child now: committed
    try:
        with pytest.raises(OSError) as info:
            (ro / "new").write_text("x")
        assert info.value.errno == 30  # EROFS
    finally:
        driver.put("img")


def _mutate(root: pathlib.Path) -> None:
    (root / "gone").unlink()
    (root / "dir" / "sub" / "deep").unlink()
    for entry in (root / "replaced").iterdir():
        entry.unlink()
    (root / "replaced").rmdir()
    (root / "replaced").mkdir()
    (root / "replaced" / "fresh").write_text("fresh")
    (root / "kept").write_text("changed")
    (root / "added").write_text("added")


def _view(root: pathlib.Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            out[rel] = "dir" if os.path.isdir(path) else pathlib.Path(path).read_text()
    return out


def test_whiteout_and_opaque_round_trip(driver: Overlay2Driver) -> None:
    base_files = {
        "gone": b"g",
        "kept": b"k",
        "dir/": None,
        "dir/sub/": None,
        "dir/sub/deep": b"d",
        "replaced/": None,
        "replaced/a": b"a",
        "replaced/b": b"b",
    }
    driver.create("base", None)
    driver.apply_diff("base", None, _tar({k.rstrip("/"): v for k, v in base_files.items()}))
    driver.create_rw("c", "base")
    with_mount = driver.get("c")
    try:
        _mutate(with_mount)
        expected = _view(with_mount)
    finally:
        driver.put("c")
    upper = pathlib.Path(driver.metadata("c")["UpperDir"])
    assert is_overlay_whiteout(os.lstat(upper / "gone"))
    assert upperdir.is_opaque(upper / "replaced")

    native = driver.changes("c", "base")
    assert native == NaiveDiffDriver.changes(driver, "c", "base")
    assert driver.diff_size("c", "base") == NaiveDiffDriver.diff_size(driver, "c", "base")

    with driver.diff("c", "base") as stream:
        data = stream.read()
    names = tarfile.open(fileobj=io.BytesIO(data)).getnames()
    assert ".wh.gone" in names and "dir/sub/.wh.deep" in names and "replaced/.wh..wh..opq" in names
    assert not any(n in ("gone", "dir/sub/deep") for n in names)

    driver.create("image", "base")
    driver.apply_diff("image", "base", io.BytesIO(data))
    image_upper = driver.home / "image" / "diff"
    assert is_overlay_whiteout(os.lstat(image_upper / "gone"))
    assert upperdir.is_opaque(image_upper / "replaced")
    driver.create_rw("c2", "image")
    root = driver.get("c2")
    try:
        assert _view(root) == expected
    finally:
        driver.put("c2")


def test_root_opaque_marker_hides_the_parent(driver: Overlay2Driver) -> None:
    driver.create("base", None)
    driver.apply_diff("base", None, _tar({"a": b"a", "d": None, "d/x": b"x"}))
    driver.create("top", "base")
    driver.apply_diff("top", "base", _tar({".wh..wh..opq": b"", "d": None, "b": b"b"}))
    driver.create_rw("c", "top")
    root = driver.get("c")
    try:
        assert sorted(_view(root)) == ["b", "d"]
    finally:
        driver.put("c")


def test_hostile_tar_through_native_apply(driver: Overlay2Driver, tmp_path: pathlib.Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    driver.create("base", None)
    driver.create("evil", "base")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        link = tarfile.TarInfo("escape")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside)
        tar.addfile(link)
        victim = tarfile.TarInfo("escape/.wh.file")
        tar.addfile(victim, io.BytesIO(b""))
        payload = tarfile.TarInfo("escape/owned")
        payload.size = 3
        tar.addfile(payload, io.BytesIO(b"pwn"))
    buf.seek(0)
    (outside / "file").write_text("keep me")
    try:
        driver.apply_diff("evil", "base", buf)
    except ArchiveError:
        pass
    assert sorted(os.listdir(outside)) == ["file"]
    assert (outside / "file").read_text() == "keep me"


def test_native_diff_only_against_the_direct_parent(driver: Overlay2Driver) -> None:
    driver.create("a", None)
    driver.apply_diff("a", None, _tar({"one": b"1"}))
    driver.create("b", "a")
    driver.apply_diff("b", "a", _tar({"two": b"2"}))
    driver.create("c", "b")
    driver.apply_diff("c", "b", _tar({"three": b"3"}))
    assert [c.path for c in driver.changes("c", "b")] == ["/three"]
    assert [c.path for c in driver.changes("c", "a")] == ["/three", "/two"]
    assert [c.path for c in driver.changes("c", None)] == ["/one", "/three", "/two"]


def test_redirect_dir_option_turns_native_diff_off(tmp_path: pathlib.Path) -> None:
    drv = _open(tmp_path / "h", {"overlay2.redirect_dir": "true"})
    try:
        assert dict(drv.status())["Native Overlay Diff"] == "false"
        assert ("redirect_dir", "on") in drv.mount_opts
    finally:
        drv.cleanup()


def test_unknown_option_and_size_on_image_layer(driver: Overlay2Driver, tmp_path: pathlib.Path) -> None:
    with pytest.raises(InvalidOption):
        open_driver("overlay2", tmp_path / "x", {"overlay2.bogus": "1"})
    driver.create("base", None)
    with pytest.raises(NotSupported, match="ReadWrite"):
        driver.create("img", "base", storage_opts={"size": "10M"})


def test_refuses_to_run_on_overlayfs(driver: Overlay2Driver, tmp_path: pathlib.Path) -> None:
    driver.create("base", None)
    driver.create_rw("c", "base")
    root = driver.get("c")
    try:
        with pytest.raises(NotSupported, match="overlayfs"):
            open_driver("overlay2", root / "nested")
    finally:
        driver.put("c")


def test_cleanup_unmounts_everything(driver: Overlay2Driver) -> None:
    driver.create("base", None)
    for id in ("c1", "c2"):
        driver.create_rw(id, "base")
        driver.get(id)
    driver.cleanup()
    assert mounts.mounts_under(driver.home) == []
    root = driver.get("c1")  # the stale count is healed by the mount table
    assert mounts.is_mountpoint(root)
    driver.put("c1")
    assert not mounts.is_mountpoint(root)


# ------------------------------------------------------------------ project quota


@pytest.fixture
def xfs_home(xfs_mount: pathlib.Path) -> pathlib.Path:
    return xfs_mount / "overlay2"


def test_size_through_xfs_project_quota(xfs_home: pathlib.Path) -> None:
    drv = _open(xfs_home, {"overlay2.size": "20M"})
    try:
        drv.create("base", None)
        drv.create_rw("c", "base", storage_opts={"size": "8M"})
        root = drv.get("c")
        try:
            (root / "small").write_bytes(b"\0" * (4 * 1024 * 1024))
            with pytest.raises(OSError):
                with open(root / "big", "wb") as fh:
                    for _ in range(8):
                        fh.write(os.urandom(1024 * 1024))
                    fh.flush()
                    os.fsync(fh.fileno())
        finally:
            drv.put("c")
    finally:
        drv.cleanup()


def test_size_without_project_quota_is_not_supported(driver: Overlay2Driver, tmp_path: pathlib.Path) -> None:
    if fsutil.backing_fs(tmp_path) == "xfs":
        pytest.skip("the test directory is on xfs, which may have project quotas")
    driver.create("base", None)
    with pytest.raises(NotSupported, match="pquota"):
        driver.create_rw("c", "base", storage_opts={"size": "10M"})
    assert not driver.exists("c")
    with pytest.raises(NotSupported):
        open_driver("overlay2", tmp_path / "sized", {"overlay2.size": "10M"})


def test_whiteout_device_is_a_char_0_0(driver: Overlay2Driver) -> None:
    driver.create("base", None)
    driver.apply_diff("base", None, _tar({"f": b"x"}))
    driver.create("top", "base")
    driver.apply_diff("top", "base", _tar({".wh.f": b""}))
    st = os.lstat(driver.home / "top" / "diff" / "f")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def test_a_link_file_left_unwritten_by_a_power_loss_is_removed_with_its_layer(driver: Overlay2Driver) -> None:
    driver.create("a", None)
    link = (driver.home / "a" / "link").read_text().strip()
    assert (driver.home / "l" / link).is_symlink()
    (driver.home / "a" / "link").write_bytes(b"\0" * len(link))  # size reached the disk, data did not
    driver.remove("a")
    assert not driver.exists("a")
    reopened = _open(driver.home)  # its sweep removes the short link left behind
    assert not (driver.home / "l" / link).is_symlink()
    reopened.cleanup()
