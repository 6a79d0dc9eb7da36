"""OCI image layouts (oci-layout, index.json, blobs/sha256/...), as a directory or a tar.

Every blob read is checked against its descriptor's digest and size before use. Image
indexes (multi-platform) are resolved to the manifest for this host's platform. Layers
are written uncompressed (`application/vnd.oci.image.layer.v1.tar`): their digest is then
the diff id, and the bytes are the exact original layer tar.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import BinaryIO, Protocol

from cowstore.digest import check_digest, sha256_bytes
from cowstore.errors import DigestMismatch, InvalidDigest
from cowstore.images import reference
from cowstore.images.config import MAX_JSON, host_architecture, load_json
from cowstore.images.errors import BadImageArchive, InvalidReference
from cowstore.images.importer import ImageSource, LayerBlob
from cowstore.images.sinks import DirSink, TarSink, spooled_size
from cowstore.images.sources import DirTree, TarTree, opener
from cowstore.images.store import Image

LAYOUT_FILE = "oci-layout"
INDEX = "index.json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
_LAYER_TYPES = (
    LAYER_TYPE,
    LAYER_TYPE + "+gzip",
    LAYER_TYPE + "+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
)

Progress = Callable[[str, int, int], None]


def is_oci_layout(tree: TarTree | DirTree) -> bool:
    return tree.exists(LAYOUT_FILE)


def _blob_path(descriptor: object, what: str) -> tuple[str, str, int | None]:
    if not isinstance(descriptor, dict):
        raise BadImageArchive(f"{what}: descriptor is not a JSON object")
    try:
        digest = check_digest(descriptor.get("digest"))
    except InvalidDigest as exc:
        raise BadImageArchive(f"{what}: {exc}") from None
    size = descriptor.get("size")
    if size is not None and (not isinstance(size, int) or size < 0):
        raise BadImageArchive(f"{what}: descriptor size must be a non-negative integer")
    return f"blobs/sha256/{digest[7:]}", digest, size


def _read_blob(tree: TarTree | DirTree, descriptor: object, what: str) -> bytes:
    path, digest, size = _blob_path(descriptor, what)
    if not tree.exists(path):
        raise BadImageArchive(f"{what}: blob {digest} is missing from the layout")
    data = tree.read(path, MAX_JSON)
    if sha256_bytes(data) != digest:
        raise DigestMismatch(f"{what}: blob {path} has digest {sha256_bytes(data)}, expected {digest}")
    if size is not None and len(data) != size:
        raise BadImageArchive(f"{what}: blob {digest} is {len(data)} bytes, the descriptor says {size}")
    return data


def _platform_manifest(tree: TarTree | DirTree, index: dict, what: str) -> dict:
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or not manifests:
        raise BadImageArchive(f"{what}: image index has no manifests")
    arch = host_architecture()
    for descriptor in manifests:
        platform = descriptor.get("platform") if isinstance(descriptor, dict) else None
        if isinstance(platform, dict) and platform.get("os") == "linux" and platform.get("architecture") == arch:
            return descriptor
    if len(manifests) == 1:
        if not isinstance(manifests[0], dict):
            raise BadImageArchive(f"{what}: image index entry is not a JSON object")
        return manifests[0]
    raise BadImageArchive(f"{what}: image index has no manifest for linux/{arch}")


def _tags(annotations: dict, default_name: str | None) -> list[str]:
    """Tags from containerd's full name, else a full ref.name, else `<default_name>:<ref.name>`."""
    for key in (CONTAINERD_NAME, REF_NAME):
        value = annotations.get(key)
        if isinstance(value, str) and ("/" in value or ":" in value):
            try:
                return [reference.normalize(value)]
            except InvalidReference:
                continue
    tag = annotations.get(REF_NAME)
    if isinstance(tag, str) and default_name:
        try:
            return [reference.normalize(f"{default_name}:{tag}")]
        except InvalidReference:
            return []
    return []


def read_sources(tree: TarTree | DirTree, default_name: str | None = None) -> list[ImageSource]:
    """The images an OCI layout holds (one per index entry), validated, not yet imported."""
    layout = load_json(tree.read(LAYOUT_FILE), f"{tree.what}: oci-layout")
    if not isinstance(layout, dict) or not isinstance(layout.get("imageLayoutVersion"), str):
        raise BadImageArchive(f"{tree.what}: oci-layout has no imageLayoutVersion")
    index = load_json(tree.read(INDEX), f"{tree.what}: index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list) or not index["manifests"]:
        raise BadImageArchive(f"{tree.what}: index.json lists no manifests")
    sources = []
    for position, descriptor in enumerate(index["manifests"]):
        what = f"{tree.what}: index.json manifest {position}"
        if not isinstance(descriptor, dict):
            raise BadImageArchive(f"{what}: descriptor is not a JSON object")
        annotations = descriptor.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise BadImageArchive(f"{what}: annotations must be a JSON object")
        manifest_descriptor = descriptor
        for _ in range(4):  # nested indexes, bounded
            if manifest_descriptor.get("mediaType") not in (INDEX_TYPE, DOCKER_LIST):
                break
            nested = load_json(_read_blob(tree, manifest_descriptor, what), f"{what}: image index")
            if not isinstance(nested, dict):
                raise BadImageArchive(f"{what}: image index is not a JSON object")
            manifest_descriptor = _platform_manifest(tree, nested, what)
        sources.append(_image_source(tree, manifest_descriptor, what, _tags(annotations, default_name)))
    return sources


def _image_source(tree: TarTree | DirTree, descriptor: dict, what: str, tags: list[str]) -> ImageSource:
    manifest = load_json(_read_blob(tree, descriptor, what), f"{what}: manifest")
    if not isinstance(manifest, dict) or manifest.get("mediaType", MANIFEST_TYPE) not in (
        MANIFEST_TYPE,
        DOCKER_MANIFEST,
    ):
        raise BadImageArchive(f"{what}: not an image manifest")
    raw_config = _read_blob(tree, manifest.get("config"), f"{what}: config")
    layer_descriptors = manifest.get("layers")
    if not isinstance(layer_descriptors, list):
        raise BadImageArchive(f"{what}: manifest has no layers list")
    blobs = []
    for number, layer in enumerate(layer_descriptors):
        path, digest, _ = _blob_path(layer, f"{what}: layer {number}")
        media = layer.get("mediaType")
        if media not in _LAYER_TYPES:
            raise BadImageArchive(f"{what}: layer {number} has unsupported media type {media!r}")
        if not tree.exists(path):
            raise BadImageArchive(f"{what}: layer blob {digest} is missing from the layout")
        blobs.append(LayerBlob(open=opener(tree, path), what=f"{tree.what}: {path}", digest=digest, independent=True))
    return ImageSource(raw_config, blobs, tags)


def _descriptor(media_type: str, digest: str, size: int, **extra: object) -> dict:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


class LayerTars(Protocol):
    """Where a layout writer gets layers: the layer store, or any source of exact layer tars."""

    def chain(self, chain: str) -> Sequence[ChainLayer]:
        """The layer and its ancestors, top first."""

    def tar_stream(self, chain: str) -> BinaryIO:
        """The layer's exact tar, verified, in a seekable stream."""


class ChainLayer(Protocol):
    @property
    def chain_id(self) -> str: ...

    @property
    def diff_id(self) -> str: ...


class LayoutWriter:
    """Writes images one by one into an OCI layout in `sink`; close() writes the index.

    `org.opencontainers.image.ref.name` gets the bare tag (what `skopeo oci:DIR:tag` and
    `umoci --image DIR:tag` look up); the full reference goes into containerd's annotation.
    Blobs are written once, however many images share them.
    """

    def __init__(self, sink: TarSink | DirSink, progress: Progress | None = None, total: int = 0) -> None:
        self.sink = sink
        self.progress = progress
        self.total = total
        self.count = 0
        self.written: set[str] = set()
        self.index: list[dict] = []
        sink.add_bytes(LAYOUT_FILE, json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        sink.mkdir("blobs")
        sink.mkdir("blobs/sha256")

    def add(self, image: Image, tags: list[str], layers: LayerTars) -> None:
        layer_descriptors = []
        chains = list(reversed(layers.chain(image.top_layer))) if image.top_layer else []
        for layer in chains:
            if self.progress:
                self.progress(layer.diff_id[7:19], self.count, self.total)
            self.count += 1
            with layers.tar_stream(layer.chain_id) as handle:
                size = spooled_size(handle)
                if layer.diff_id not in self.written:
                    self.sink.add_file(f"blobs/sha256/{layer.diff_id[7:]}", handle, size)
                    self.written.add(layer.diff_id)
            layer_descriptors.append(_descriptor(LAYER_TYPE, layer.diff_id, size))
        config = image.config
        _add_blob(self.sink, self.written, image.raw_config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPE,
                "config": _descriptor(CONFIG_TYPE, image.id, len(image.raw_config)),
                "layers": layer_descriptors,
            },
            separators=(",", ":"),
        ).encode()
        digest = _add_blob(self.sink, self.written, manifest)
        platform = {"architecture": config.get("architecture", host_architecture()), "os": config.get("os", "linux")}
        untagged: list[str | None] = [None]
        for tag in tags or untagged:
            annotations = {}
            if tag:
                annotations = {REF_NAME: tag.rpartition(":")[2], CONTAINERD_NAME: reference.fully_qualified(tag)}
            entry = _descriptor(MANIFEST_TYPE, digest, len(manifest), platform=platform)
            if annotations:
                entry["annotations"] = annotations
            self.index.append(entry)

    def close(self) -> None:
        self.sink.add_bytes(
            INDEX,
            json.dumps(
                {"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": self.index}, separators=(",", ":")
            ).encode(),
        )
        if self.progress:
            self.progress("done", self.total, self.total)


def write_layout(
    entries: list[tuple[Image, list[str]]],
    layers: LayerTars,
    sink: TarSink | DirSink,
    progress: Progress | None = None,
) -> None:
    """Write an OCI layout of the images (each with the tags to annotate) into `sink`."""
    writer = LayoutWriter(sink, progress, sum(len(image.diff_ids) for image, _ in entries))
    for image, tags in entries:
        writer.add(image, tags, layers)
    writer.close()


def _add_blob(sink: TarSink | DirSink, written: set[str], data: bytes) -> str:
    digest = sha256_bytes(data)
    if digest not in written:
        sink.add_bytes(f"blobs/sha256/{digest[7:]}", data)
        written.add(digest)
    return digest


def check_empty_target(path: os.PathLike) -> None:
    """An OCI directory target must not exist yet or be empty: we never merge layouts."""
    if os.path.isdir(path) and os.listdir(path):
        raise BadImageArchive(f"{os.fspath(path)} exists and is not empty; choose a new directory for the layout")
