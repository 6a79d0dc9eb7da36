"""Trees deeper than Python's recursion limit and longer than PATH_MAX, on every path a user reaches.

A layer of 1,200 nested directories loads; a container holding 2,100 nested directories
(a path over 4,096 bytes) is listed by `ps` with its size, its diff and export hold the
deepest file, and its commit is refused in one line (a tar path over max-path).
"""

from __future__ import annotations

import io
import os
import pathlib
import subprocess
import tarfile

import pytest

from cowstore.app.demo import build_image_archive
from cowstore.errors import ArchiveError
from cowstore.images import load
from cowstore.store import Store

from ..images.imagearchives import docker_archive
from ..support.stores import store_or_skip
from ..support.tars import E, build


@pytest.fixture(params=["vfs", "overlay2"])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path):
    try:
        with store_or_skip(tmp_path, request.param) as s:
            yield s
    finally:
        # pytest's own cleanup (shutil.rmtree) recurses once per level and would fail on these trees.
        subprocess.run(["rm", "-rf", "--one-file-system", str(tmp_path / "root")], check=True)


def _nest(root: pathlib.Path, depth: int) -> None:
    """`depth` nested directories `d` below `root`, made through descriptors (the path exceeds PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as leaf:
            leaf.write(b"bottom")
    finally:
        os.close(fd)


def test_layer_of_1200_nested_directories_loads(store: Store) -> None:
    deep = build(*[E("d/" * n, "dir", mode=0o755) for n in range(1, 1201)], E("d/" * 1200 + "leaf", data=b"bottom"))
    base = build(E("d", "dir", mode=0o755), E("top", data=b"base"))
    [image] = load(store.images, io.BytesIO(docker_archive([([base, deep], ["deep:1"])])))
    store.containers.create(image.id, name="deep")
    for container in store.containers.containers():
        store.containers.size(container)
    assert store.check(verify_content=True) == []


def test_container_with_2100_nested_directories(store: Store, tmp_path: pathlib.Path) -> None:
    [image] = load(store.images, io.BytesIO(build_image_archive()))
    store.containers.create(image.tags[0], name="deep")
    store.containers.create(image.tags[0], name="other")
    root = store.containers.mount("deep")
    try:
        _nest(root, 2100)
    finally:
        store.containers.umount("deep")
    assert {c.name for c in store.containers.containers()} == {"deep", "other"}
    for container in store.containers.containers():
        store.containers.size(container)
    changes = store.containers.diff("deep")
    assert any(c.path.endswith("/leaf") for c in changes)
    out = io.BytesIO()
    store.containers.export("deep", out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        assert any(name.endswith("d/leaf") for name in tar.getnames())
    with pytest.raises(ArchiveError, match="path"):  # a tar path over max-path (4,096 bytes)
        store.containers.commit("deep", tag="deep:2")
    assert [c.path for c in store.containers.diff("other")] == []
