"""devicemapper's changes of a snapshot against its origin: one pass per commit, nothing missed.

A commit reads both trees through read-only views, each mounted once, and never mounts
the container read-write; the ctime bound still finds a rewrite that keeps a file's
size and mtime; and neither views nor mounts leave a loop device behind, while an
exported layer keeps (and shares) its own.
"""

from __future__ import annotations

import io
import os
import pathlib
import secrets
import tarfile
from collections.abc import Iterator
from typing import Any

import pytest

from cowstore.archive.changes import Change, changes_dirs
from cowstore.drivers.devicemapper import snapdiff
from cowstore.drivers.devicemapper.driver import DeviceMapperDriver
from cowstore.host import loop
from cowstore.host.mounts import find_mount
from cowstore.layers import LayerStore

from ...support.drivers import opened
from ...support.tars import E, build


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceMapperDriver]:
    with opened(DeviceMapperDriver, "devicemapper", tmp_path_factory.mktemp("snapdiff") / "devicemapper") as drv:
        yield drv


def _new_id() -> str:
    return secrets.token_hex(32)


def _members(arch: io.BufferedIOBase | Any) -> dict[str, bytes]:
    with tarfile.open(fileobj=arch, mode="r|") as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else b"") for m in tar}  # type: ignore[union-attr]


def _idle(driver: DeviceMapperDriver) -> None:
    """Nothing of the driver attached or active: no loop device on its files, no device file."""
    assert loop.attached_below(driver.home) == []
    assert [dev for dev in driver.list_devices() if dev["name"]] == []


def test_commit_reads_each_tree_once_through_a_read_only_view(
    driver: DeviceMapperDriver, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LayerStore(tmp_path / "store", driver)
    try:
        image = store.register(io.BytesIO(build(E("etc", "dir", mode=0o755), E("etc/hostname", data=b"old\n"))))
        store.create_rw("c", image.chain_id, init=lambda root: (root / ".dockerenv").write_bytes(b""))
        (store.mount("c") / "etc" / "hostname").write_bytes(b"new\n")
        store.unmount("c")
        rw = store.get_rw("c")
        targets: list[str] = []
        real_mount = snapdiff.mount

        def counting_mount(device: str, target: pathlib.Path, *args: Any) -> None:
            targets.append(target.name)
            real_mount(device, target, *args)

        monkeypatch.setattr(snapdiff, "mount", counting_mount)
        monkeypatch.setattr(driver, "get", lambda id: pytest.fail(f"{id} mounted read-write for a diff"))
        with store.rw_diff("c") as arch:
            members = _members(arch)
        monkeypatch.undo()
        assert sorted(targets) == sorted([f".view-{rw.mount_id}", f".view-{rw.init_id}"])
        assert members == {"etc": b"", "etc/hostname": b"new\n"}
        store.remove_rw("c")
        store.release(image.chain_id)
    finally:
        store.close()
    _idle(driver)


def test_the_ctime_bounded_walk_finds_what_the_full_comparison_finds(driver: DeviceMapperDriver) -> None:
    """Changes deep in directories the container never touched, each one that a bound on
    the wrong clock or a skipped directory would miss, found as the full comparison finds
    them; and a rewrite that keeps size and mtime, which Docker's rule (and so the full
    comparison) cannot see, found by its content because its ctime says it was touched."""
    base, top = _new_id(), _new_id()
    driver.create(base, None)
    root = driver.get(base)
    for name in ("chmod", "rewrite", "same", "gone", "link"):
        (root / "a" / "b" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "a" / "b" / name).write_bytes(b"aaaa")
    os.symlink("xxxx", root / "a" / "b" / "symlink")
    for name in ("chmod", "rewrite", "same", "gone", "link", "symlink"):
        os.utime(root / "a" / "b" / name, ns=(1_600_000_000_000_000_000,) * 2, follow_symlinks=False)
    driver.put(base)
    driver.create(top, base)
    root = driver.get(top)
    b = root / "a" / "b"
    (b / "chmod").chmod(0o600)
    (b / "rewrite").write_bytes(b"bbbb")
    (b / "same").write_bytes(b"bbbb")
    os.utime(b / "same", ns=(1_600_000_000_000_000_000,) * 2)
    (b / "gone").unlink()
    os.link(b / "link", root / "a" / "hardlink")
    (b / "symlink").unlink()
    os.symlink("yyyy", b / "symlink")
    os.utime(b / "symlink", ns=(1_600_000_000_000_000_000,) * 2, follow_symlinks=False)
    driver.put(top)
    assert snapdiff.copied_before(driver.refs, top, base) is not None  # the bounded walk is the one tested
    found = driver.changes(top, base)
    with snapdiff.read_only_view(driver, top) as new, snapdiff.read_only_view(driver, base) as old:
        assert [c for c in found if c.path != "/a/b/same"] == changes_dirs(new, old)
    # `link` gained a name (a new ctime) but kept its content: no change.
    assert [(c.path, c.kind) for c in found] == [
        ("/a", "C"),
        ("/a/b", "C"),
        ("/a/b/chmod", "C"),
        ("/a/b/gone", "D"),
        ("/a/b/rewrite", "C"),
        ("/a/b/same", "C"),
        ("/a/b/symlink", "C"),
        ("/a/hardlink", "A"),
    ]
    with driver.diff(top, base) as arch:
        members = _members(arch)
    assert (members["a/b/rewrite"], members["a/b/same"]) == (b"bbbb", b"bbbb")
    driver.remove(top)
    driver.remove(base)
    _idle(driver)


def test_an_exported_layer_keeps_its_loop_device_through_views_and_mounts(driver: DeviceMapperDriver) -> None:
    exported, child = _new_id(), _new_id()
    driver.create_rw(exported, None)
    [spec] = driver.external_mounts(exported, readonly=False)
    driver.create(child, exported)
    (driver.get(child) / "new").write_bytes(b"x")
    driver.put(child)
    assert driver.changes(child, exported) == [Change("/new", "A")]
    driver.get(exported)
    found = find_mount(os.path.realpath(driver.home / "mnt" / exported))
    assert found is not None and found.source == spec.source  # the exported device, not a second one
    driver.put(exported)
    device_file = os.path.realpath(driver.devices.devices_dir / driver.devices.device_name(exported))
    assert loop.backing_file(spec.source) == device_file
    driver.release_external(exported)
    driver.remove(child)
    driver.remove(exported)
    _idle(driver)
