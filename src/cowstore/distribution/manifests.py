"""Manifests and indexes as registries serve them: OCI and Docker schema 2, validated and bounded.

A manifest names a config and layer blobs by descriptor (media type, digest, size); an
index (Docker: manifest list) names one manifest per platform. What the registry sends is
hostile until checked: at most 4 MiB per document, digests well-formed, sizes non-negative,
at most 8 levels of nested indexes. Docker's schema 1 is refused with a clear message:
it has no config blob and cannot be verified the same way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from cowstore.digest import check_digest
from cowstore.distribution.errors import ManifestInvalid, ManifestNotSupported
from cowstore.errors import InvalidArgument, InvalidDigest
from cowstore.images.config import host_architecture

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
LAYER_TYPES = {
    OCI_LAYER: "plain",
    OCI_LAYER + "+gzip": "gzip",
    OCI_LAYER + "+zstd": "zstd",
    DOCKER_LAYER_GZIP: "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "plain",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}
INDEXES = (OCI_INDEX, DOCKER_LIST)
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
MAX_MANIFEST = 4 * 1024 * 1024
MAX_INDEX_DEPTH = 8
MAX_LAYERS = 1000


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: dict | None = None

    @staticmethod
    def parse(value: object, what: str) -> Descriptor:
        if not isinstance(value, dict):
            raise ManifestInvalid(f"{what}: descriptor is not a JSON object")
        try:
            digest = check_digest(value.get("digest"))
        except InvalidDigest as exc:
            raise ManifestInvalid(f"{what}: {exc}") from None
        size = value.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestInvalid(f"{what}: descriptor size must be a non-negative integer")
        media_type = value.get("mediaType")
        if not isinstance(media_type, str):
            raise ManifestInvalid(f"{what}: descriptor has no mediaType")
        platform = value.get("platform")
        return Descriptor(media_type, digest, size, platform if isinstance(platform, dict) else None)

    def to_json(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Manifest:
    """An image manifest as received (its exact bytes, which its digest is of)."""

    media_type: str
    digest: str
    body: bytes = field(repr=False)
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Index:
    media_type: str
    digest: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @staticmethod
    def parse(text: str | None) -> Platform:
        """`OS/ARCH[/VARIANT]`; None means this host (linux and its architecture)."""
        if not text:
            return Platform("linux", host_architecture(), _host_variant())
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidArgument(f"invalid platform {text!r}: expected OS/ARCH[/VARIANT]")
        return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def matches(self, platform: dict | None) -> bool:
        if not isinstance(platform, dict):
            return False
        if platform.get("os") != self.os or platform.get("architecture") != self.architecture:
            return False
        if self.variant is None:
            return True
        variant = platform.get("variant") or ("v8" if self.architecture == "arm64" else None)
        return variant == self.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def _host_variant() -> str | None:
    machine = os.uname().machine
    return "v7" if machine.startswith("armv7") else None


def _load(body: bytes, what: str) -> dict:
    if len(body) > MAX_MANIFEST:
        raise ManifestInvalid(f"{what}: manifest larger than {MAX_MANIFEST} bytes")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestInvalid(f"{what}: manifest is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestInvalid(f"{what}: manifest is not a JSON object")
    return data


def parse(body: bytes, content_type: str | None, digest: str, what: str) -> Manifest | Index:
    """A manifest or index from its bytes; the media type from the body, else the Content-Type."""
    data = _load(body, what)
    media_type = data.get("mediaType") or (content_type or "").split(";")[0].strip()
    if data.get("schemaVersion") == 1 or media_type in SCHEMA1:
        raise ManifestNotSupported(
            f"{what}: Docker image manifest schema 1 is not supported (deprecated since Docker 1.10); "
            "push the image again with a current client to convert it"
        )
    if media_type not in MANIFESTS + INDEXES:
        if "manifests" in data:
            media_type = OCI_INDEX
        elif "config" in data:
            media_type = OCI_MANIFEST
        else:
            raise ManifestNotSupported(f"{what}: unsupported manifest media type {media_type!r}")
    if data.get("schemaVersion") != 2:
        raise ManifestInvalid(f"{what}: schemaVersion must be 2")
    if media_type in INDEXES:
        entries = data.get("manifests")
        if not isinstance(entries, list):
            raise ManifestInvalid(f"{what}: index has no manifests list")
        return Index(media_type, digest, tuple(Descriptor.parse(e, f"{what}: index entry") for e in entries))
    config = Descriptor.parse(data.get("config"), f"{what}: config")
    layers = data.get("layers")
    if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
        raise ManifestInvalid(f"{what}: manifest needs a layers list of at most {MAX_LAYERS} entries")
    parsed = tuple(Descriptor.parse(layer, f"{what}: layer {n}") for n, layer in enumerate(layers))
    for number, layer in enumerate(parsed):
        if layer.media_type not in LAYER_TYPES:
            raise ManifestNotSupported(f"{what}: layer {number} has unsupported media type {layer.media_type!r}")
    return Manifest(media_type, digest, body, config, parsed)


def choose(index: Index, platform: Platform, what: str) -> Descriptor:
    """The index entry for `platform`; an index of one image without platforms gives that one."""
    for entry in index.manifests:
        if entry.media_type in MANIFESTS + INDEXES and platform.matches(entry.platform):
            return entry
    if len(index.manifests) == 1 and index.manifests[0].platform is None:
        return index.manifests[0]
    offered = sorted({_describe(e.platform) for e in index.manifests if e.platform})
    raise ManifestNotSupported(
        f"{what}: no image for platform {platform} (the index offers: {', '.join(offered) or 'none'})"
    )


def _describe(platform: dict | None) -> str:
    if not platform:
        return "?"
    return "/".join(str(platform[k]) for k in ("os", "architecture", "variant") if platform.get(k))


def compression(media_type: str) -> str:
    """ "gzip", "zstd" or "plain" for a layer media type."""
    return LAYER_TYPES.get(media_type, "plain")


def layer_media_type(kind: str) -> str:
    """The OCI layer media type for compression `kind`."""
    return OCI_LAYER if kind == "plain" else f"{OCI_LAYER}+{kind}"


def build(config: Descriptor, layers: list[Descriptor]) -> bytes:
    """An OCI image manifest (compact JSON: the same inputs always give the same digest)."""
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    return json.dumps(document, separators=(",", ":")).encode()
