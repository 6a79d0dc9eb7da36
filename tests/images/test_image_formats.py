"""Import and export: docker-save, OCI layouts, rootfs tars; digests; bad input changes nothing."""

from __future__ import annotations

import gzip
import io
import json
import pathlib
import tarfile

import pytest

from cowstore.errors import CowstoreError, DigestMismatch
from cowstore.images import BadImageArchive, ImageNotFound, import_rootfs, load, save
from cowstore.images.sources import DirTree, OutsideLink
from cowstore.store import Store

from ..support.tars import layer_tar
from .imagearchives import docker_archive, oci_layout, sha, snapshot, tar_directory

BASE = layer_tar({"etc/os-release": b"ID=test\n", "bin/tool": b"\x7fELF tool"}, dirs=("etc", "bin"))
TOP = layer_tar({"etc/motd": b"hello\n"}, dirs=("etc",), whiteouts=("bin/.wh.tool",))


def members(archive: bytes) -> dict[str, bytes]:
    result = {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar:
            handle = tar.extractfile(member) if member.isfile() else None
            result[member.name] = handle.read() if handle else b""
    return result


@pytest.mark.parametrize("compression", ["plain", "gzip", "zstd"])
def test_docker_archive_load_and_byte_identical_save(store: Store, compression: str) -> None:
    [image] = load(store.images, io.BytesIO(docker_archive([([BASE, TOP], ["test/app:1.0"])], compression)))
    assert image.tags == ("test/app:1.0",)
    assert image.diff_ids == [sha(BASE), sha(TOP)]
    assert len(store.layers.layers()) == 2
    root = store.containers.mount(store.containers.create("test/app:1.0", name="c").id)
    assert (root / "etc" / "motd").read_bytes() == b"hello\n" and not (root / "bin" / "tool").exists()
    store.containers.umount("c")
    out = io.BytesIO()
    save(store.images, ["test/app:1.0"], out)
    saved = members(out.getvalue())
    manifest = json.loads(saved["manifest.json"])
    assert manifest[0]["RepoTags"] == ["test/app:1.0"]
    assert [saved[p] for p in manifest[0]["Layers"]] == [BASE, TOP]  # exact original layer tars
    assert sha(saved[manifest[0]["Config"]]) == image.id


def test_shared_layers_are_stored_once(store: Store) -> None:
    other = layer_tar({"other": b"x"})
    archive = docker_archive([([BASE, TOP], ["a:1"]), ([BASE, other], ["b:1"]), ([BASE], ["c:1"])])
    loaded = load(store.images, io.BytesIO(archive))
    assert len(loaded) == 3
    assert len(store.layers.layers()) == 3  # BASE once, TOP, other
    assert store.layers.get(sha(BASE)).refcount == 1  # image c:1 holds it; the others via children
    again = load(store.images, io.BytesIO(archive))
    assert [i.id for i in again] == [i.id for i in loaded]
    assert len(store.layers.layers()) == 3


def test_save_writes_repeated_layer_once_and_symlinks(store: Store) -> None:
    load(store.images, io.BytesIO(docker_archive([([BASE, TOP], ["a:1"]), ([BASE, TOP, BASE], ["b:1"])])))
    out = io.BytesIO()
    save(store.images, ["a:1", "b:1"], out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        links = [m for m in tar if m.issym()]
    assert len(links) == 1
    other = Store(store.root.parent / "other", "vfs", sync=False)
    try:
        loaded = load(other.images, io.BytesIO(out.getvalue()))
        assert sorted(t for i in loaded for t in i.tags) == ["a:1", "b:1"]
    finally:
        other.shutdown()


@pytest.mark.parametrize("fmt", ["oci-archive", "oci-dir"])
def test_oci_round_trip(store: Store, tmp_path: pathlib.Path, fmt: str) -> None:
    [image] = load(store.images, io.BytesIO(docker_archive([([BASE, TOP], ["app:2"])])))
    target = tmp_path / ("layout" if fmt == "oci-dir" else "layout.tar")
    if fmt == "oci-dir":
        save(store.images, ["app:2"], target, fmt=fmt)
        index = json.loads((target / "index.json").read_text())
        assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "2"
    else:
        with open(target, "wb") as out:
            save(store.images, ["app:2"], out, fmt=fmt)
    other = Store(tmp_path / "other", "vfs", sync=False)
    try:
        [again] = load(other.images, target)
        assert again.id == image.id and again.tags == ("app:2",)
    finally:
        other.shutdown()


@pytest.mark.parametrize("compression", ["gzip", "zstd", "plain"])
def test_oci_layout_directory_and_tar(store: Store, tmp_path: pathlib.Path, compression: str) -> None:
    layout = oci_layout(tmp_path / "myapp", [BASE, TOP], ref="v1", compression=compression)
    [image] = load(store.images, layout)
    assert image.tags == ("myapp:v1",)  # a bare ref.name takes the layout's name
    as_tar = tmp_path / "tarred.tar"
    as_tar.write_bytes(tar_directory(layout))
    [same] = load(store.images, as_tar)
    assert same.id == image.id


def test_rootfs_import(store: Store) -> None:
    data = layer_tar({"hello": b"world"})
    image = import_rootfs(store.images, io.BytesIO(gzip.compress(data)), "rootfs.tar.gz", tag="plain", message="first")
    assert image.tags == ("plain:latest",)
    assert image.diff_ids == [sha(data)]  # the diff id is of the uncompressed tar
    assert image.config["history"][0]["comment"] == "first"


def test_truncated_archive_changes_nothing(store: Store) -> None:
    load(store.images, io.BytesIO(docker_archive([([BASE], ["keep:1"])])))
    before = snapshot(store)
    archive = docker_archive([([BASE, TOP], ["new:1"])])
    end_of_content = len(archive.rstrip(b"\0"))  # what follows is only end-of-archive padding
    for cut in (len(archive) // 3, len(archive) // 2, end_of_content - 5):
        with pytest.raises(CowstoreError):
            load(store.images, io.BytesIO(archive[:cut]))
        assert snapshot(store) == before


def test_truncated_compressed_layer_changes_nothing(store: Store) -> None:
    before = snapshot(store)
    archive = docker_archive([([BASE, TOP], ["new:1"])], "gzip")
    members_ = members(archive)
    path = [k for k in members_ if k.endswith("layer.tar")][1]
    members_[path] = members_[path][:-12]
    from .imagearchives import tar_of

    with pytest.raises(BadImageArchive, match="truncated|corrupt"):
        load(store.images, io.BytesIO(tar_of(members_)))
    assert snapshot(store) == before


def test_missing_blob_changes_nothing(store: Store, tmp_path: pathlib.Path) -> None:
    before = snapshot(store)
    archive = docker_archive([([BASE, TOP], ["x:1"])])
    missing = [name for name in members(archive) if name.endswith("layer.tar")][1]
    with pytest.raises(BadImageArchive, match="missing"):
        load(store.images, io.BytesIO(docker_archive([([BASE, TOP], ["x:1"])], drop=missing)))
    layout = oci_layout(tmp_path / "l", [BASE, TOP])
    next((layout / "blobs" / "sha256").glob(sha(gzip.compress(TOP, mtime=0))[7:])).unlink()
    with pytest.raises(BadImageArchive, match="missing"):
        load(store.images, layout)
    assert snapshot(store) == before


def test_digest_mismatch_changes_nothing(store: Store, tmp_path: pathlib.Path) -> None:
    before = snapshot(store)
    wrong = json.loads(docker_archive_config([BASE, TOP]))
    wrong["rootfs"]["diff_ids"][1] = sha(b"something else")
    with pytest.raises(DigestMismatch, match="expected"):
        load(
            store.images,
            io.BytesIO(docker_archive([([BASE, TOP], ["x:1"])], config_override=json.dumps(wrong).encode())),
        )
    with pytest.raises(DigestMismatch):
        load(store.images, oci_layout(tmp_path / "bad", [BASE, TOP], compression="plain", corrupt_layer=True))
    assert snapshot(store) == before


def docker_archive_config(layers: list[bytes]) -> bytes:
    from .imagearchives import config_for

    return config_for(layers)


def test_failed_second_image_undoes_the_first(store: Store) -> None:
    before = snapshot(store)
    good = docker_archive([([BASE], ["good:1"]), ([TOP], ["bad:1"])])
    parts = members(good)
    manifest = json.loads(parts["manifest.json"])
    parts.pop(manifest[1]["Layers"][0])
    parts[manifest[1]["Layers"][0]] = b"not a tar at all" * 100
    from .imagearchives import tar_of

    with pytest.raises(CowstoreError):
        load(store.images, io.BytesIO(tar_of(parts)))
    assert snapshot(store) == before


def test_neither_format(store: Store, tmp_path: pathlib.Path) -> None:
    with pytest.raises(BadImageArchive, match="neither"):
        load(store.images, io.BytesIO(layer_tar({"a": b"b"})))
    with pytest.raises(BadImageArchive, match="not a valid tar"):
        load(store.images, io.BytesIO(b"\x00garbage" * 10))


def test_archive_symlink_escape_is_refused(store: Store) -> None:
    from .imagearchives import tar_of

    config = docker_archive_config([BASE])
    manifest = [{"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["l/layer.tar"]}]
    archive = tar_of(
        {"c.json": config, "manifest.json": json.dumps(manifest).encode()}, {"l/layer.tar": "../../../etc/passwd"}
    )
    with pytest.raises(BadImageArchive, match="outside"):
        load(store.images, io.BytesIO(archive))


def test_unknown_image(store: Store) -> None:
    with pytest.raises(ImageNotFound, match="No such image: nope"):
        save(store.images, ["nope"], io.BytesIO())


@pytest.mark.parametrize("absolute", [True, False])
def test_layout_blob_symlink_out_of_the_layout_is_refused(store: Store, tmp_path: pathlib.Path, absolute: bool) -> None:
    """A layout blob that is a symlink to a file outside the layout (even one with the
    right content) is neither read nor counted as present."""
    before = snapshot(store)
    layout = oci_layout(tmp_path / "l", [BASE, TOP])
    blob = layout / "blobs" / "sha256" / sha(gzip.compress(TOP, mtime=0))[7:]
    outside = tmp_path / "outside-blob"
    outside.write_bytes(blob.read_bytes())
    blob.unlink()
    blob.symlink_to(outside if absolute else pathlib.Path("../../..") / outside.name)
    with DirTree(layout, "layout") as tree:
        assert not tree.exists(f"blobs/sha256/{blob.name}")
        with pytest.raises(OutsideLink, match="outside the layout"):
            tree.open(f"blobs/sha256/{blob.name}")
    with pytest.raises(BadImageArchive, match="missing"):
        load(store.images, layout)
    assert snapshot(store) == before


def test_layout_symlink_within_the_layout_is_followed(tmp_path: pathlib.Path) -> None:
    (tmp_path / "l" / "a").mkdir(parents=True)
    (tmp_path / "l" / "a" / "layer.tar").write_bytes(b"data")
    (tmp_path / "l" / "b").mkdir()
    (tmp_path / "l" / "b" / "layer.tar").symlink_to("../a/layer.tar")
    (tmp_path / "l" / "dir").symlink_to("a")
    with DirTree(tmp_path / "l", "layout") as tree:
        assert tree.exists("b/layer.tar") and tree.exists("/dir/layer.tar")
        assert tree.read("b/layer.tar") == b"data"
        assert not tree.exists("a") and not tree.exists("nope") and not tree.exists("../l/a/layer.tar")
