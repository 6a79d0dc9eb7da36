"""Tags, lookups and removal rules of the image store (Docker's rmi semantics)."""

from __future__ import annotations

import io

import pytest

from cowstore.images import ImageInUse, ImageNotFound, InvalidReference, load
from cowstore.images.reference import fully_qualified, normalize
from cowstore.store import Store

from ..support.tars import layer_tar
from .imagearchives import docker_archive, snapshot

BASE = layer_tar({"a": b"1"})
TOP = layer_tar({"b": b"2"})


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("busybox", "busybox:latest"),
        ("docker.io/library/busybox:1.36", "busybox:1.36"),
        ("docker.io/me/app", "me/app:latest"),
        ("localhost:5000/app:v2", "localhost:5000/app:v2"),
        ("quay.io/org/app:1", "quay.io/org/app:1"),
    ],
)
def test_normalize(ref: str, expected: str) -> None:
    assert normalize(ref) == expected


@pytest.mark.parametrize("ref", ["Busybox", "a b", "app:", "app@sha256:00", ":tag", ""])
def test_invalid_references(ref: str) -> None:
    with pytest.raises(InvalidReference):
        normalize(ref)


def test_fully_qualified() -> None:
    assert fully_qualified("busybox") == "docker.io/library/busybox:latest"
    assert fully_qualified("localhost:5000/x:1") == "localhost:5000/x:1"


def test_lookup_by_tag_id_and_prefix(store: Store) -> None:
    [image] = load(store.images, io.BytesIO(docker_archive([([BASE], ["app:1"])])))
    assert store.images.get("app:1").id == image.id
    assert store.images.get(image.id).id == image.id
    assert store.images.get(image.short_id).id == image.id
    assert store.images.get(image.id[7:]).id == image.id
    with pytest.raises(ImageNotFound):
        store.images.get("app:2")


def test_tag_and_untag(store: Store) -> None:
    [image] = load(store.images, io.BytesIO(docker_archive([([BASE], ["app:1"])])))
    store.images.tag("app:1", "other/name:x")
    assert store.images.get(image.id).tags == ("app:1", "other/name:x")
    assert store.images.remove("app:1") == ["Untagged: app:1"]
    assert len(store.layers.layers()) == 1
    store.images.tag(image.id, "third:1")
    with pytest.raises(ImageInUse, match="multiple repositories"):
        store.images.remove(image.id)
    done = store.images.remove(image.id, force=True)
    assert done[-1] == f"Deleted: {image.diff_ids[0]}"
    assert store.layers.layers() == [] and store.images.images() == []


def test_rmi_refuses_image_in_use_and_changes_nothing(store: Store) -> None:
    load(store.images, io.BytesIO(docker_archive([([BASE, TOP], ["app:1"])])))
    store.containers.create("app:1", name="user")
    before = snapshot(store)
    with pytest.raises(ImageInUse, match="being used by container user"):
        store.images.remove("app:1")
    assert snapshot(store) == before
    store.images.remove("app:1", force=True)
    assert store.images.images() == []
    assert len(store.layers.layers()) == 2  # the container still needs them
    store.containers.remove("user")
    assert store.layers.layers() == []


def test_same_image_twice_holds_one_reference(store: Store) -> None:
    archive = docker_archive([([BASE, TOP], ["app:1"])])
    load(store.images, io.BytesIO(archive))
    load(store.images, io.BytesIO(archive))
    top = store.images.get("app:1").top_layer
    assert store.layers.get(top).refcount == 1
    store.images.remove("app:1")
    assert store.layers.layers() == []
