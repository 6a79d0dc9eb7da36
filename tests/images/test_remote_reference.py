"""References with registry hosts, Docker Hub normalisation and digests."""

from __future__ import annotations

import pytest

from cowstore.images.errors import InvalidReference
from cowstore.images.reference import normalize_digest_ref, parse_remote

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "domain", "path", "tag", "digest", "endpoint"),
    [
        ("busybox", "docker.io", "library/busybox", "latest", None, "registry-1.docker.io"),
        ("docker.io/library/busybox:1.36", "docker.io", "library/busybox", "1.36", None, "registry-1.docker.io"),
        ("index.docker.io/user/app", "docker.io", "user/app", "latest", None, "registry-1.docker.io"),
        ("user/app:v2", "docker.io", "user/app", "v2", None, "registry-1.docker.io"),
        ("127.0.0.1:5000/team/app:1", "127.0.0.1:5000", "team/app", "1", None, "127.0.0.1:5000"),
        ("localhost/app", "localhost", "app", "latest", None, "localhost"),
        ("Registry.Example.com/a/b/c", "Registry.Example.com", "a/b/c", "latest", None, "Registry.Example.com"),
        (f"127.0.0.1:5000/team/app@{DIGEST}", "127.0.0.1:5000", "team/app", None, DIGEST, "127.0.0.1:5000"),
        (f"busybox:1@{DIGEST}", "docker.io", "library/busybox", "1", DIGEST, "registry-1.docker.io"),
    ],
)
def test_parse_remote(text: str, domain: str, path: str, tag: str | None, digest: str | None, endpoint: str) -> None:
    remote = parse_remote(text)
    assert (remote.domain, remote.path, remote.tag, remote.digest, remote.endpoint) == (
        domain,
        path,
        tag,
        digest,
        endpoint,
    )


def test_familiar_forms() -> None:
    assert parse_remote("busybox").familiar_tag_ref == "busybox:latest"
    assert parse_remote("127.0.0.1:5000/team/app:1").familiar_tag_ref == "127.0.0.1:5000/team/app:1"
    assert normalize_digest_ref(f"docker.io/library/busybox@{DIGEST}") == f"busybox@{DIGEST}"
    assert str(parse_remote(f"busybox@{DIGEST}")) == f"docker.io/library/busybox@{DIGEST}"


@pytest.mark.parametrize(
    "text", ["", "UPPER", "host:5000/UPPER/x", "a@sha256:short", "a:b:c", "a@md5:" + "0" * 32, "x" * 600, "a/:t"]
)
def test_invalid(text: str) -> None:
    with pytest.raises(InvalidReference):
        parse_remote(text)
