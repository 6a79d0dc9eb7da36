"""Pull from a real docker-registry: two stores exchanging images, reuse, digests, indexes, failures."""

from __future__ import annotations

import json

import pytest

from cowstore.distribution import Platform, Puller, Pusher, tidy
from cowstore.distribution.blobstore import BlobStore
from cowstore.distribution.client import Registry
from cowstore.distribution.errors import ManifestNotSupported, RegistryNotFound
from cowstore.distribution.manifests import OCI_INDEX, OCI_MANIFEST
from cowstore.distribution.records import DistributionRecords
from cowstore.images import Image
from cowstore.images.reference import parse_remote
from cowstore.store import Store
from tests.distribution.conftest import Recorder, image_files, settings
from tests.support.registry import RegistryServer


def test_two_stores_exchange_an_image(store: Store, other_store: Store, demo: Image, plain_registry) -> None:
    ref = f"{plain_registry.host}/team/demo:1"
    pushed = Pusher(store, settings()).push("busybox-demo:latest", ref)
    recorder = Recorder()
    [pulled] = Puller(other_store, settings(), recorder).pull(ref)
    assert pulled.image.id == demo.id
    assert pulled.image.tags == (f"{plain_registry.host}/team/demo:1",)
    assert pulled.image.digests == (f"{plain_registry.host}/team/demo@{pushed.digest}",)
    assert pulled.fetched == len(demo.diff_ids)
    assert recorder.texts().count("Pull complete") == len(demo.diff_ids)
    assert f"Digest: {pushed.digest}" in recorder.messages
    assert image_files(other_store, pulled.image) == image_files(store, demo)
    assert other_store.check() == []
    # the image is found by its repo digest as well
    assert other_store.images.get(f"{plain_registry.host}/team/demo@{pushed.digest}").id == demo.id


def test_layers_already_stored_are_not_downloaded(store: Store, demo: Image, plain_registry) -> None:
    ref = f"{plain_registry.host}/team/again:1"
    Pusher(store, settings()).push("busybox-demo:latest", ref)
    recorder = Recorder()
    [pulled] = Puller(store, settings(), recorder).pull(ref)
    assert pulled.fetched == 0
    assert recorder.texts() == ["Already exists"] * len(demo.diff_ids)
    assert recorder.bytes.get("download", 0) == 0
    assert "Status: Image is up to date for " + f"{plain_registry.host}/team/again:1" in recorder.messages


def test_pull_by_digest_records_no_tag(store: Store, other_store: Store, demo: Image, plain_registry) -> None:
    ref = f"{plain_registry.host}/team/bydigest:1"
    pushed = Pusher(store, settings()).push("busybox-demo:latest", ref)
    [pulled] = Puller(other_store, settings()).pull(f"{plain_registry.host}/team/bydigest@{pushed.digest}")
    assert pulled.image.tags == ()
    assert pulled.image.digests == (f"{plain_registry.host}/team/bydigest@{pushed.digest}",)
    lines = other_store.images.remove(f"{plain_registry.host}/team/bydigest@{pushed.digest}")
    assert f"Deleted: {demo.id}" in lines


def test_unknown_tag_and_repository(other_store: Store, plain_registry) -> None:
    with pytest.raises(RegistryNotFound, match="manifest unknown"):
        Puller(other_store, settings()).pull(f"{plain_registry.host}/nobody/here:nope")
    assert other_store.images.images() == [] and other_store.layers.layers() == []


def test_index_chooses_the_platform_and_zstd_layers_pull(
    store: Store, other_store: Store, demo: Image, plain_registry: RegistryServer
) -> None:
    """An OCI index with a gzip manifest for amd64 and a zstd one for arm64 (same image)."""
    repo = f"{plain_registry.host}/team/multi"
    gz = Pusher(store, settings()).push("busybox-demo:latest", f"{repo}:gzip")
    zst = Pusher(store, settings()).push("busybox-demo:latest", f"{repo}:zstd", compression="zstd")
    assert gz.digest != zst.digest
    entries = [
        {
            "mediaType": OCI_MANIFEST,
            "digest": gz.digest,
            "size": gz.size,
            "platform": {"os": "linux", "architecture": "amd64"},
        },
        {
            "mediaType": OCI_MANIFEST,
            "digest": zst.digest,
            "size": zst.size,
            "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
        },
    ]
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    registry = Registry(parse_remote(f"{repo}:all"), settings())
    index_digest = registry.put_manifest("team/multi", "all", index.encode(), OCI_INDEX)
    registry.close()
    [arm] = Puller(other_store, settings()).pull(f"{repo}:all", platform=Platform.parse("linux/arm64"))
    assert arm.image.id == demo.id
    assert arm.reference.digest == index_digest  # the repo digest is the index's, as Docker records it
    records = DistributionRecords(other_store.layers.db)
    assert [m.digest for m in records.manifests_for(demo.id)] == [zst.digest]
    with pytest.raises(ManifestNotSupported, match="no image for platform linux/s390x"):
        Puller(other_store, settings()).pull(f"{repo}:all", platform=Platform.parse("linux/s390x"))


def test_all_tags(store: Store, other_store: Store, demo: Image, plain_registry) -> None:
    repo = f"{plain_registry.host}/team/tags"
    for tag in ("a", "b"):
        Pusher(store, settings()).push("busybox-demo:latest", f"{repo}:{tag}")
    pulled = Puller(other_store, settings()).pull(repo, all_tags=True)
    assert sorted(p.reference.tag for p in pulled) == ["a", "b"]
    assert other_store.images.get(demo.id).tags == (f"{repo}:a", f"{repo}:b")


def test_kept_blobs_are_pruned_with_their_layers(store: Store, other_store: Store, demo: Image, plain_registry) -> None:
    ref = f"{plain_registry.host}/team/prune:1"
    Pusher(store, settings()).push("busybox-demo:latest", ref)
    Puller(other_store, settings()).pull(ref)
    blobs = BlobStore(other_store.root, DistributionRecords(other_store.layers.db))
    assert len(list(blobs.blobs.iterdir())) == len(demo.diff_ids)
    other_store.images.remove(ref)
    tidy(other_store)  # what `cowstore rmi` and every pull and push do
    assert list(blobs.blobs.iterdir()) == []
    assert DistributionRecords(other_store.layers.db).all_blobs() == []


def test_index_nesting_is_bounded(store: Store) -> None:
    """An index whose entry is always another index: refused after MAX_INDEX_DEPTH levels."""
    from cowstore.digest import sha256_bytes
    from cowstore.distribution.errors import ManifestInvalid

    class Endless:
        calls = 0

        def manifest(self, repository: str, reference: str, what: str) -> tuple[bytes, str, str]:
            Endless.calls += 1
            entry = {
                "mediaType": OCI_INDEX,
                "digest": f"sha256:{Endless.calls:064x}",
                "size": 10,
                "platform": {"os": "linux", "architecture": Platform.parse(None).architecture},
            }
            body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}).encode()
            return body, OCI_INDEX, sha256_bytes(body)

    with pytest.raises(ManifestInvalid, match="nested deeper than 8"):
        Puller(store, settings())._resolve(Endless(), parse_remote("r.example/a/b:1"), Platform.parse(None))  # type: ignore[arg-type]
    assert Endless.calls == 9
