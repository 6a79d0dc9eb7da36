"""load on a driver that applies detached: layers extracted side by side, the same image as one by one."""

from __future__ import annotations

import gzip
import io
import json
import pathlib
import tarfile
from collections.abc import Iterator

import pytest

from cowstore.errors import CowstoreError, DigestMismatch
from cowstore.host import mounts
from cowstore.images import load
from cowstore.layers import batch
from cowstore.store import Store

from ..support.stores import chain_batches, store_or_skip
from ..support.tars import E, build, layer_tar
from ..support.trees import dir_tree
from .imagearchives import config_for, docker_archive, oci_layout, sha, tar_of

LAYERS = [
    layer_tar({f"usr/lib/f{n}": bytes([n]) * 300 for n in range(60)}, ("usr", "usr/lib", "etc")),
    build(E("usr/lib/.wh.f7"), E("etc/conf", data=b"one")),
    build(E("usr/lib", "dir", mode=0o755), E("usr/lib/.wh..wh..opq"), E("usr/lib/g", data=b"g")),
    build(E(".wh..wh..opq"), E("usr", "dir", mode=0o755), E("usr/lib", "dir", mode=0o755), E("usr/lib/h", data=b"h")),
    layer_tar({"etc/conf": b"two"}, ("etc",)),
]


@pytest.fixture(params=["overlay2", "aufs"])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Store]:
    with store_or_skip(tmp_path / request.param, request.param) as s:
        assert batch.applies(s.layers)
        yield s


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    return chain_batches(monkeypatch)


def _top_tree(store: Store, image_top: str) -> object:
    cache = store.layers.get(image_top).cache_id
    try:
        return dir_tree(store.driver.get(cache))
    finally:
        store.driver.put(cache)


def _state(store: Store) -> tuple[object, ...]:
    rows = tuple(tuple(r) for r in store.layers.db.query("SELECT * FROM layers ORDER BY cache_id"))
    images = tuple(tuple(r) for r in store.layers.db.query("SELECT * FROM images ORDER BY 1"))
    return rows, images, tuple(sorted(store.driver.ids()))


@pytest.mark.parametrize("compression", ["plain", "gzip"])
def test_load_side_by_side_matches_one_by_one(
    store: Store, tmp_path: pathlib.Path, compression: str, batches: list[int]
) -> None:
    seen: list[tuple[int, int]] = []
    (image,) = load(
        store.images,
        io.BytesIO(docker_archive([(LAYERS, ["side:1"])], compression)),
        lambda what, index, total: seen.append((index, total)),
    )
    assert batches == [len(LAYERS)]
    assert seen == [(n, len(LAYERS)) for n in range(len(LAYERS) + 1)]
    assert image.diff_ids == [sha(layer) for layer in LAYERS]
    for layer, data in zip(store.layers.chain(image.top_layer)[::-1], LAYERS, strict=True):
        assert store.layers.tar_stream(layer.chain_id).read() == data
    with store_or_skip(tmp_path / "vfs", "vfs") as reference:
        (expected,) = load(reference.images, io.BytesIO(docker_archive([(LAYERS, ["side:1"])], compression)))
        assert expected.top_layer == image.top_layer
        assert _top_tree(store, image.top_layer) == _top_tree(reference, expected.top_layer)
    assert store.layers.check(verify_content=True) == []


def test_oci_layout_and_stored_layers(store: Store, tmp_path: pathlib.Path, batches: list[int]) -> None:
    load(store.images, io.BytesIO(docker_archive([(LAYERS[:2], ["low:1"])])))
    (image,) = load(store.images, oci_layout(tmp_path / "layout", LAYERS))
    assert batches == [2, 3]  # the two layers stored already are not extracted again
    assert store.layers.tar_stream(image.top_layer).read() == LAYERS[-1]
    assert store.layers.check(verify_content=True) == []


@pytest.mark.parametrize("broken", ["digest", "truncated"])
def test_a_corrupt_middle_layer_leaves_nothing(store: Store, tmp_path: pathlib.Path, broken: str) -> None:
    load(store.images, io.BytesIO(docker_archive([(LAYERS[:1], ["keep:1"])])))
    before = _state(store)
    layers = list(LAYERS)
    if broken == "digest":
        archive = docker_archive([(layers, ["bad:1"])], config_override=_config_with_wrong(layers, 2))
        error: type[CowstoreError] = DigestMismatch
    else:
        archive = _truncated_member(docker_archive([(layers, ["bad:1"])], "gzip"), 2)
        error = CowstoreError
    with pytest.raises(error):
        load(store.images, io.BytesIO(archive))
    assert _state(store) == before
    assert mounts.mounts_under(tmp_path) == []
    assert store.layers.check() == []


def _config_with_wrong(layers: list[bytes], index: int) -> bytes:
    config = json.loads(config_for(layers))
    config["rootfs"]["diff_ids"][index] = sha(b"something else")
    return json.dumps(config).encode()


def _truncated_member(archive: bytes, index: int) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    name = sorted(n for n in members if n.endswith("layer.tar") and members[n] == gzip.compress(LAYERS[index], mtime=0))
    members[name[0]] = members[name[0]][:-12]
    return tar_of(members)
