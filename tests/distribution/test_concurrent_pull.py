"""pull into a store whose driver applies detached: layers extracted side by side as their blobs arrive."""

from __future__ import annotations

import io
import pathlib

import pytest

from cowstore.distribution import Puller, Pusher
from cowstore.distribution.blobstore import BlobStore
from cowstore.distribution.records import DistributionRecords
from cowstore.errors import CowstoreError
from cowstore.host import mounts
from cowstore.images import load
from cowstore.store import Store
from tests.distribution.conftest import Recorder, image_files, settings
from tests.images.imagearchives import docker_archive, sha
from tests.support.registry import RegistryServer
from tests.support.stores import chain_batches, store_or_skip
from tests.support.tars import E, build, layer_tar

LAYERS = [
    layer_tar({f"srv/f{n}": bytes([n]) * 2000 for n in range(50)}, ("srv", "etc")),
    build(E("srv/.wh.f1"), E("etc/a", data=b"a")),
    build(E("srv", "dir", mode=0o755), E("srv/.wh..wh..opq"), E("srv/only", data=b"only")),
    layer_tar({"etc/b": b"b"}, ("etc",)),
]


def test_pull_extracts_side_by_side(
    store: Store, tmp_path: pathlib.Path, plain_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    [image] = load(store.images, io.BytesIO(docker_archive([(LAYERS, ["side:1"])], "gzip")))
    ref = f"{plain_registry.host}/team/side:1"
    Pusher(store, settings()).push("side:1", ref)
    batches = chain_batches(monkeypatch)
    with store_or_skip(tmp_path / "overlay2", "overlay2") as other:
        recorder = Recorder()
        [pulled] = Puller(other, settings(), recorder).pull(ref)
        assert batches == [len(LAYERS)]
        assert pulled.image.id == image.id and pulled.fetched == len(LAYERS)
        assert recorder.texts().count("Pull complete") == len(LAYERS)
        assert image_files(other, pulled.image) == image_files(store, image)
        assert other.check() == []


def test_a_corrupt_blob_in_the_middle_leaves_nothing(
    store: Store, tmp_path: pathlib.Path, plain_registry: RegistryServer
) -> None:
    load(store.images, io.BytesIO(docker_archive([(LAYERS, ["broken:1"])], "gzip")))
    Pusher(store, settings()).push("broken:1", f"{plain_registry.host}/team/broken:1")
    [blob] = DistributionRecords(store.layers.db).blobs_for(sha(LAYERS[1]))
    hex_digest = blob.digest.removeprefix("sha256:")
    victim = plain_registry.root / "data/docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"
    original = victim.read_bytes()
    try:
        victim.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with store_or_skip(tmp_path / "overlay2", "overlay2") as other:
            with pytest.raises(CowstoreError):
                Puller(other, settings()).pull(f"{plain_registry.host}/team/broken:1")
            assert other.check() == []
            assert other.images.images() == [] and other.layers.layers() == []
            assert other.driver.ids() == []
            kept = BlobStore(other.root, DistributionRecords(other.layers.db))
            assert list(kept.blobs.iterdir()) == []
    finally:
        victim.write_bytes(original)
    assert mounts.mounts_under(tmp_path) == []
