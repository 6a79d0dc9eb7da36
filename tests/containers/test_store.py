"""Container lifecycle on the stores that open here: init layer, diff, commit, export, rm, prune."""

from __future__ import annotations

import io
import os
import pathlib
import tarfile

import pytest

from cowstore.app.demo import build_image_archive
from cowstore.archive.changes import Change
from cowstore.containers import INIT_PATHS, ContainerExists, ContainerMounted, ContainerNotFound
from cowstore.images import load
from cowstore.store import Store

from ..support.stores import store_or_skip

DRIVERS = ["vfs", "overlay2", "overlay"]


@pytest.fixture(params=DRIVERS)
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path):
    with store_or_skip(tmp_path, request.param) as s:
        yield s


@pytest.fixture
def image(store: Store):
    [loaded] = load(store.images, io.BytesIO(build_image_archive()))
    return loaded


def test_create_makes_init_layer(store: Store, image) -> None:
    container = store.containers.create(image.tags[0], name="web")
    root = store.containers.mount("web")
    try:
        for path, kind in INIT_PATHS.items():
            target = root / path.lstrip("/")
            if kind == "dir":
                assert target.is_dir(), path
            elif kind == "file":
                assert target.is_file() and target.stat().st_size == 0, path
            else:
                assert os.readlink(target) == kind
        assert (root / "etc" / "passwd").exists()  # the image's own files are still there
        assert store.containers.diff("web") == []  # init files never show in a diff
    finally:
        store.containers.umount(container.id)


def test_init_layer_unlinks_image_symlinks(store: Store) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, target in (("dev", "/tmp/escape"), ("etc", "/etc")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    from cowstore.images import import_rootfs

    import_rootfs(store.images, io.BytesIO(buf.getvalue()), "links", tag="links")
    store.containers.create("links", name="c")
    root = store.containers.mount("c")
    try:
        assert (root / "dev").is_dir() and not (root / "dev").is_symlink()
        assert (root / "etc" / "hosts").is_file() and not (root / "etc").is_symlink()
    finally:
        store.containers.umount("c")
    assert not os.path.exists("/tmp/escape")


def test_write_diff_commit_and_isolation(store: Store, image) -> None:
    a = store.containers.create(image.id, name="a")
    b = store.containers.create(image.id, name="b")
    root = store.containers.mount("a")
    (root / "new.txt").write_text("new")
    (root / "etc" / "motd").write_text("changed")
    os.unlink(root / "etc" / "group")
    store.containers.umount("a")
    assert store.containers.diff("a") == [
        Change("/etc", "C"),
        Change("/etc/group", "D"),
        Change("/etc/motd", "C"),
        Change("/new.txt", "A"),
    ]
    assert store.containers.diff("b") == []
    written, virtual = store.containers.size(a)
    assert 0 < written < virtual
    committed = store.containers.commit("a", tag="mine:1", message="msg", author="me")
    assert committed.diff_ids[:-1] == image.diff_ids
    assert committed.config["history"][-1]["comment"] == "msg"
    assert committed.config["author"] == "me"
    assert store.containers.diff("a")  # the container keeps its changes
    c = store.containers.create("mine:1", name="c")
    root = store.containers.mount("c")
    try:
        assert (root / "new.txt").read_text() == "new"
        assert not (root / "etc" / "group").exists()
        assert (root / "etc" / "motd").read_text() == "changed"
    finally:
        store.containers.umount("c")
    assert store.containers.diff("c") == []
    assert b.id != c.id


def test_export_is_flat_rootfs(store: Store, image) -> None:
    store.containers.create(image.id, name="x")
    root = store.containers.mount("x")
    (root / "added").write_text("yes")
    store.containers.umount("x")
    out = io.BytesIO()
    store.containers.export("x", out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        names = set(tar.getnames())
    assert {"bin/busybox", "etc/passwd", "added", ".cowstoreenv", "proc"} <= names
    assert store.layers.get_rw(store.containers.get("x").id).mount_count == 0


def test_inspect_has_graphdriver(store: Store, image) -> None:
    container = store.containers.create(image.id, name="i")
    info = store.containers.inspect("i")
    assert info["Id"] == container.id and info["Image"] == image.id
    assert info["GraphDriver"]["Name"] == store.driver.name
    assert isinstance(info["GraphDriver"]["Data"], dict)
    assert info["SizeRw"] == 0 and info["SizeRootFs"] >= store.images.size(image)


def test_lookup_rm_and_prune(store: Store, image) -> None:
    first = store.containers.create(image.id, name="one")
    store.containers.create(image.id, name="two")
    assert store.containers.get(first.id[:8]).name == "one"
    with pytest.raises(ContainerExists):
        store.containers.create(image.id, name="one")
    store.containers.mount("one")
    with pytest.raises(ContainerMounted):
        store.containers.remove("one")
    removed, _ = store.containers.prune()
    assert [c.name for c in removed] == ["two"]
    store.containers.remove("one", force=True)
    with pytest.raises(ContainerNotFound):
        store.containers.get("one")
    store.images.remove(image.id)
    assert store.layers.layers() == [] and store.layers.rw_layers() == []
