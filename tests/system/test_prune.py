"""`system prune`: unmounted containers, dangling (or unused) images, unused layers, orphan storage."""

from __future__ import annotations

import io
import pathlib

import pytest

from cowstore.app.demo import build_image_archive
from cowstore.images import load
from cowstore.store import Store
from cowstore.system.prune import system_prune

from ..support.tars import layer_tar


@pytest.fixture
def store(tmp_path: pathlib.Path):
    opened = Store(tmp_path / "root", "vfs")
    archive = tmp_path / "img.tar"
    archive.write_bytes(build_image_archive())
    load(opened.images, archive)
    try:
        yield opened
    finally:
        opened.shutdown()


def test_prune_keeps_what_is_used_and_reclaims_the_rest(store: Store) -> None:
    store.containers.create("busybox-demo", name="mounted")
    root = store.containers.mount("mounted")
    (root / "kept").write_bytes(b"k" * 100_000)
    store.containers.commit("mounted", tag="kept:1")
    store.containers.create("busybox-demo", name="idle")
    dangling = store.containers.commit("idle")  # no tag
    leaked = store.layers.register(io.BytesIO(layer_tar({"leak": b"x" * 200_000})))  # a reference nobody holds
    orphan = store.driver.home / "dir" / ("0" * 64)
    orphan.mkdir()
    (orphan / "f").write_bytes(b"o" * 300_000)

    report = system_prune(store)
    assert [c.name for c in report.containers] == ["idle"]
    assert f"Deleted: {dangling.id}" in report.images
    assert [layer.chain_id for layer in report.layers] == [leaked.chain_id]
    assert report.orphans == ["0" * 64] and not orphan.exists()
    assert report.reclaimed > 500_000
    assert sorted(t for image in store.images.images() for t in image.tags) == ["busybox-demo:latest", "kept:1"]
    assert store.check(verify_content=True) == []

    report = system_prune(store, all_images=True)  # kept:1 has no container; busybox-demo has one
    assert report.containers == [] and report.layers == [] and report.orphans == []
    assert report.images[0] == "Untagged: kept:1"
    assert [t for image in store.images.images() for t in image.tags] == ["busybox-demo:latest"]
    assert (root / "kept").exists()


def test_a_lease_of_a_live_operation_is_not_pruned(store: Store) -> None:
    with store.layers.lease() as lease:
        held = store.layers.register(io.BytesIO(layer_tar({"f": b"loading"})), lease=lease)
        assert system_prune(store).layers == []
        assert store.layers.get(held.chain_id).refcount == 1
