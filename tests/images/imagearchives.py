"""Builders for the archives the image tests import: docker-save and OCI layouts (layer tars: support.tars)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pathlib
import tarfile

import zstandard

from cowstore.store import Store

MTIME = 1_600_000_000


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compress(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def config_for(layers: list[bytes], comment: str = "test") -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-02T03:04:05.123456789Z",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [sha(layer) for layer in layers]},
            "history": [
                {"created": "2024-01-02T03:04:05Z", "created_by": f"{comment} {i}"} for i in range(len(layers))
            ],
        }
    ).encode()


def tar_of(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), MTIME
            tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def docker_archive(
    images: list[tuple[list[bytes], list[str]]],
    compression: str = "plain",
    *,
    config_override: bytes | None = None,
    drop: str | None = None,
    repeat_as_symlink: bool = True,
) -> bytes:
    """A `docker save` tar of images given as (layer tars bottom to top, tags)."""
    members: dict[str, bytes] = {}
    symlinks: dict[str, str] = {}
    manifest = []
    first: dict[str, str] = {}
    for layers, tags in images:
        config = config_override or config_for(layers)
        config_name = sha(config)[7:] + ".json"
        members[config_name] = config
        paths = []
        for number, layer in enumerate(layers):
            path = f"{sha(layer)[7:19]}{number}/layer.tar"
            digest = sha(layer)
            if path in members:
                pass
            elif digest in first and repeat_as_symlink:
                symlinks[path] = f"../{first[digest]}"
            else:
                members[path] = compress(layer, compression)
                first.setdefault(digest, path)
            paths.append(path)
        manifest.append({"Config": config_name, "RepoTags": tags, "Layers": paths})
    members["manifest.json"] = json.dumps(manifest).encode()
    if drop is not None:
        members.pop(drop)
    return tar_of(members, symlinks)


def oci_layout(
    target: pathlib.Path,
    layers: list[bytes],
    ref: str | None = "latest",
    compression: str = "gzip",
    corrupt_layer: bool = False,
) -> pathlib.Path:
    """An OCI layout directory with one image; `corrupt_layer` breaks the first blob's digest."""
    blobs = target / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (target / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    descriptors = []
    media = "application/vnd.oci.image.layer.v1.tar" + ("" if compression == "plain" else f"+{compression}")
    for number, layer in enumerate(layers):
        blob = compress(layer, compression)
        digest = sha(blob)
        if corrupt_layer and number == 0:
            blob = blob[:-1] + bytes([blob[-1] ^ 1])
        (blobs / digest[7:]).write_bytes(blob)
        descriptors.append({"mediaType": media, "digest": digest, "size": len(blob)})
    config = config_for(layers)
    (blobs / sha(config)[7:]).write_bytes(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(config),
                "size": len(config),
            },
            "layers": descriptors,
        }
    ).encode()
    (blobs / sha(manifest)[7:]).write_bytes(manifest)
    entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest), "size": len(manifest)}
    if ref:
        entry["annotations"] = {"org.opencontainers.image.ref.name": ref}
    (target / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return target


def tar_directory(path: pathlib.Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for item in sorted(path.rglob("*")):
            tar.add(item, arcname=str(item.relative_to(path)), recursive=False)
    return buf.getvalue()


def snapshot(store: Store) -> tuple:
    """Everything a failed operation must leave untouched: rows and driver directories."""
    db = store.layers.db
    rows = tuple(
        tuple(tuple(r) for r in db.query(f"SELECT * FROM {table} ORDER BY 1"))
        for table in ("layers", "mounts", "images", "tags", "containers")
    )
    return rows, tuple(sorted(os.listdir(store.driver.home / "dir")))
