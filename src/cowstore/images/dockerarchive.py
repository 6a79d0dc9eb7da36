"""The `docker save` / `docker load` archive (manifest.json, repositories, per-layer tars).

Reading accepts both the classic layout (`<v1id>/layer.tar`, repeated layers as
symlinks) and Docker 25's (`blobs/sha256/<hex>` paths in manifest.json). Writing
produces the classic layout, which `docker load`, `podman load` and `skopeo` all read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import BinaryIO

from cowstore.digest import sha256_bytes
from cowstore.images.config import load_json
from cowstore.images.errors import BadImageArchive
from cowstore.images.importer import ImageSource, LayerBlob
from cowstore.images.sinks import TarSink, spooled_size
from cowstore.images.sources import DirTree, TarTree, opener
from cowstore.images.store import Image
from cowstore.layers import LayerStore

MANIFEST = "manifest.json"
_DIGEST_PATH = re.compile(r"(?:^|/)(?:sha256[:/])?([0-9a-f]{64})(?:\.json|\.tar)?\Z")

Progress = Callable[[str, int, int], None]


def is_docker_archive(tree: TarTree | DirTree) -> bool:
    return tree.exists(MANIFEST)


def _digest_in_name(name: str) -> str | None:
    """`blobs/sha256/<hex>` and `<hex>.json` name their content's digest; verify it."""
    match = _DIGEST_PATH.search(name)
    return f"sha256:{match.group(1)}" if match and ("blobs/" in name or name.endswith(".json")) else None


def read_sources(tree: TarTree | DirTree) -> list[ImageSource]:
    """The images a docker-save archive holds, validated but not yet imported."""
    manifest = load_json(tree.read(MANIFEST), f"{tree.what}: manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise BadImageArchive(f"{tree.what}: manifest.json must be a non-empty JSON array")
    sources = []
    for index, entry in enumerate(manifest):
        what = f"{tree.what}: manifest.json entry {index}"
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("Config"), str)
            or not isinstance(entry.get("Layers"), list)
        ):
            raise BadImageArchive(f"{what} needs a Config name and a Layers list")
        layers = entry["Layers"]
        if not all(isinstance(name, str) for name in layers):
            raise BadImageArchive(f"{what}: Layers must be file names")
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise BadImageArchive(f"{what}: RepoTags must be a list of names")
        raw_config = tree.read(entry["Config"])
        expected = _digest_in_name(entry["Config"])
        if expected is not None and sha256_bytes(raw_config) != expected:
            raise BadImageArchive(f"{what}: config {entry['Config']} has digest {sha256_bytes(raw_config)}")
        for name in layers:
            if not tree.exists(name):
                raise BadImageArchive(f"{what} names {name}, which is missing from the archive")
        blobs = [
            LayerBlob(
                open=opener(tree, name),
                what=f"{tree.what}: {name}",
                digest=_digest_in_name(name) if "blobs/" in name else None,
                independent=True,
            )
            for name in layers
        ]
        sources.append(ImageSource(raw_config, blobs, tags))
    return sources


def _v1_id(parent: str | None, chain: str) -> str:
    """A deterministic legacy layer id per chain, so shared layers are written once."""
    return sha256_bytes(f"{parent or ''} {chain}".encode()).removeprefix("sha256:")


def write_archive(
    entries: list[tuple[Image, list[str]]], layers: LayerStore, out: BinaryIO, progress: Progress | None = None
) -> None:
    """Write `docker save` output for images (each with the tags to record) to `out`."""
    sink = TarSink(out)
    manifest = []
    repositories: dict[str, dict[str, str]] = {}
    written: dict[str, str] = {}  # diff id -> path of the first copy in this archive
    dirs: set[str] = set()
    total = sum(len(image.diff_ids) for image, _ in entries)
    count = 0
    try:
        for image, tags in entries:
            chains = [layer.chain_id for layer in reversed(layers.chain(image.top_layer))] if image.top_layer else []
            paths = []
            parent_v1: str | None = None
            for chain in chains:
                layer = layers.get(chain)
                v1 = _v1_id(parent_v1, chain)
                path = f"{v1}/layer.tar"
                if progress:
                    progress(layer.diff_id[7:19], count, total)
                count += 1
                if v1 not in dirs:
                    dirs.add(v1)
                    _write_layer_dir(sink, layers, layer.diff_id, chain, v1, parent_v1, written, image)
                paths.append(path)
                parent_v1 = v1
            hex_id = image.id.removeprefix("sha256:")
            sink.add_bytes(f"{hex_id}.json", image.raw_config)
            manifest.append({"Config": f"{hex_id}.json", "RepoTags": tags or None, "Layers": paths})
            for tag in tags:
                name, _, version = tag.rpartition(":")
                if parent_v1:
                    repositories.setdefault(name, {})[version] = parent_v1
        sink.add_bytes(MANIFEST, json.dumps(manifest, separators=(",", ":")).encode())
        if repositories:
            sink.add_bytes("repositories", json.dumps(repositories, separators=(",", ":")).encode())
        if progress:
            progress("done", total, total)
    finally:
        sink.close()


def _write_layer_dir(
    sink: TarSink,
    layers: LayerStore,
    diff_id: str,
    chain: str,
    v1: str,
    parent_v1: str | None,
    written: dict[str, str],
    image: Image,
) -> None:
    sink.mkdir(v1)
    sink.add_bytes(f"{v1}/VERSION", b"1.0")
    legacy = {"id": v1, "created": "1970-01-01T00:00:00Z", "os": image.config.get("os", "linux")}
    if parent_v1:
        legacy["parent"] = parent_v1
    sink.add_bytes(f"{v1}/json", json.dumps(legacy, separators=(",", ":")).encode())
    first = written.get(diff_id)
    if first is not None:
        sink.symlink(f"{v1}/layer.tar", f"../{first}")
    else:
        with layers.tar_stream(chain) as handle:
            sink.add_file(f"{v1}/layer.tar", handle, spooled_size(handle))
        written[diff_id] = f"{v1}/layer.tar"
