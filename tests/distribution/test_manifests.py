"""Manifests as registries send them: validated, bounded, schema 1 refused, platforms chosen."""

from __future__ import annotations

import json

import pytest

from cowstore.digest import sha256_bytes
from cowstore.distribution import manifests
from cowstore.distribution.errors import ManifestInvalid, ManifestNotSupported
from cowstore.distribution.manifests import DOCKER_LIST, DOCKER_MANIFEST, Index, Manifest, Platform
from cowstore.errors import InvalidArgument

D = "sha256:" + "1" * 64


def _manifest(**extra: object) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": D, "size": 7},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": D, "size": 9}],
    }
    doc.update(extra)
    return json.dumps(doc).encode()


def test_docker_schema2_manifest() -> None:
    body = _manifest()
    parsed = manifests.parse(body, None, sha256_bytes(body), "m")
    assert isinstance(parsed, Manifest) and parsed.layers[0].size == 9 and parsed.body == body


def test_schema1_is_refused_clearly() -> None:
    body = json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": []}).encode()
    with pytest.raises(ManifestNotSupported, match="schema 1 is not supported"):
        manifests.parse(body, "application/vnd.docker.distribution.manifest.v1+prettyjws", D, "m")


@pytest.mark.parametrize(
    "body",
    [
        b"x" * (manifests.MAX_MANIFEST + 1),
        b"[]",
        _manifest(layers=[{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:../x", "size": 1}]),
        _manifest(layers=[{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": D, "size": -1}]),
        _manifest(layers="nope"),
    ],
)
def test_hostile_manifests(body: bytes) -> None:
    with pytest.raises(ManifestInvalid):
        manifests.parse(body, None, D, "m")


def test_unknown_layer_media_type() -> None:
    with pytest.raises(ManifestNotSupported, match="unsupported media type"):
        manifests.parse(_manifest(layers=[{"mediaType": "text/plain", "digest": D, "size": 1}]), None, D, "m")


def test_platform_choice() -> None:
    entries = [
        {"mediaType": DOCKER_MANIFEST, "digest": D, "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
        {
            "mediaType": DOCKER_MANIFEST,
            "digest": "sha256:" + "2" * 64,
            "size": 1,
            "platform": {"os": "linux", "architecture": "arm", "variant": "v7"},
        },
    ]
    body = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": entries}).encode()
    index = manifests.parse(body, None, D, "i")
    assert isinstance(index, Index)
    assert manifests.choose(index, Platform.parse("linux/arm/v7"), "i").digest.endswith("2" * 64)
    assert manifests.choose(index, Platform.parse("linux/amd64"), "i").digest == D
    with pytest.raises(ManifestNotSupported, match="linux/amd64, linux/arm/v7"):
        manifests.choose(index, Platform.parse("linux/arm/v6"), "i")
    with pytest.raises(InvalidArgument):
        Platform.parse("linux")


def test_built_manifests_are_deterministic() -> None:
    config = manifests.Descriptor(manifests.OCI_CONFIG, D, 3)
    layer = manifests.Descriptor(manifests.layer_media_type("zstd"), D, 5)
    assert manifests.build(config, [layer]) == manifests.build(config, [layer])
    assert b"tar+zstd" in manifests.build(config, [layer])
