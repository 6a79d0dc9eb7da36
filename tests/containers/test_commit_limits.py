"""Commit honours the store's limits before it writes the container's changeset anywhere.

A container holding a 1 GiB sparse file costs almost no disk, but its tar is 1 GiB of
zeros: the diff spool must not be written when the limits already refuse it.
"""

from __future__ import annotations

import io
import os
import pathlib

import pytest

from cowstore.app.demo import build_image_archive
from cowstore.archive import Limits
from cowstore.errors import InvalidArgument, ResourceExhausted
from cowstore.images import load
from cowstore.store import Store

from ..support.stores import store_or_skip

GiB = 1024**3


@pytest.fixture(params=["vfs", "overlay2"])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path):
    with store_or_skip(tmp_path, request.param, limits=Limits(max_bytes=100 * 1024 * 1024)) as s:
        yield s


def _container_with_sparse_file(store: Store) -> str:
    [image] = load(store.images, io.BytesIO(build_image_archive()))
    store.containers.create(image.tags[0], name="sparse")
    root = store.containers.mount("sparse")
    try:
        with open(root / "hole", "wb") as handle:
            handle.truncate(GiB)
    finally:
        store.containers.umount("sparse")
    return "sparse"


def _no_diff(*args: object) -> None:
    raise AssertionError("the changeset was written although the limits refuse it")


def test_commit_of_a_sparse_file_over_max_bytes_writes_nothing(store: Store, monkeypatch) -> None:
    name = _container_with_sparse_file(store)
    monkeypatch.setattr(store.layers.driver, "diff", _no_diff)
    images_before = store.images.images()
    with pytest.raises(InvalidArgument, match="max-bytes"):
        store.containers.commit(name, tag="big:1")
    assert store.images.images() == images_before
    assert [p for p in os.listdir(store.layers.tmp) if p.startswith("spool-")] == []


def test_commit_over_min_free_disk_writes_nothing(store: Store, monkeypatch) -> None:
    name = _container_with_sparse_file(store)
    monkeypatch.setattr(store.layers.driver, "diff", _no_diff)
    fs = os.statvfs(store.layers.tmp)
    store.layers.limits = Limits(min_free_disk=fs.f_bavail * fs.f_frsize - GiB // 2)
    with pytest.raises(ResourceExhausted, match="min-free-disk"):
        store.containers.commit(name, tag="big:1")


def test_commit_within_the_limits_still_works(store: Store) -> None:
    [image] = load(store.images, io.BytesIO(build_image_archive()))
    store.containers.create(image.tags[0], name="small")
    root = store.containers.mount("small")
    try:
        (root / "note").write_bytes(b"x" * 1000)
    finally:
        store.containers.umount("small")
    committed = store.containers.commit("small", tag="small:1")
    assert list(committed.tags) == ["small:1"]


def test_commit_refuses_a_file_named_like_a_whiteout(store: Store) -> None:
    """`diff` shows `A /.wh.etc`; committing it would delete /etc instead: refused in one line."""
    [image] = load(store.images, io.BytesIO(build_image_archive()))
    store.containers.create(image.tags[0], name="wh")
    root = store.containers.mount("wh")
    try:
        (root / ".wh.etc").write_bytes(b"innocent")
    finally:
        store.containers.umount("wh")
    assert "A /.wh.etc" in {str(c) for c in store.containers.diff("wh")}
    with pytest.raises(InvalidArgument, match=r"\.wh\.etc"):
        store.containers.commit("wh", tag="wh:1")
