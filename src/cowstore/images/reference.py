"""Image references (`name:tag`, `name@sha256:...`) with Docker's grammar and its familiar short forms.

References are stored in the familiar form Docker prints (`busybox:latest`, not
`docker.io/library/busybox:latest`) so that a tag typed either way finds the image.
A reference with a registry host (`127.0.0.1:5000/team/app:1`) keeps its host; a name
without one is on Docker Hub, whose API answers at registry-1.docker.io.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from cowstore.images.errors import InvalidReference

DEFAULT_TAG = "latest"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)"
_NAME = re.compile(rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)  # Go's \w: ASCII only, no look-alike letters
_ANONYMOUS = re.compile(r"[a-f0-9]{64}")
_HEX_PREFIX = re.compile(r"(?:sha256:)?[0-9a-f]{1,64}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
DOCKER_HUB = "docker.io"
HUB_ENDPOINT = "registry-1.docker.io"


def split(ref: str) -> tuple[str, str]:
    """`name[:tag]` -> (familiar name, tag); raises InvalidReference."""
    if not isinstance(ref, str) or not ref or len(ref) > 255:
        raise InvalidReference(f"invalid reference format: {ref!r}")
    if "@" in ref:
        raise InvalidReference(f"invalid reference format: {ref!r} (digest references cannot be used as tags)")
    name, tag = ref, DEFAULT_TAG
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1 :]
    if not _NAME.fullmatch(name):
        raise InvalidReference(f"invalid reference format: {ref!r} (repository names must be lowercase)")
    if _ANONYMOUS.fullmatch(name):  # it would read as an image id
        raise InvalidReference(f"invalid repository name ({name}), cannot specify 64-byte hexadecimal strings")
    if not _TAG.fullmatch(tag):
        raise InvalidReference(f"invalid tag format: {tag!r}")
    return familiar(name), tag


def familiar(name: str) -> str:
    """Drop Docker Hub's implicit `docker.io/` and `library/` prefixes."""
    for prefix in ("docker.io/", "index.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    if name.startswith("library/") and name.count("/") == 1:
        name = name[len("library/") :]
    return name


def normalize(ref: str) -> str:
    """The stored form `familiar-name:tag` of a reference."""
    name, tag = split(ref)
    return f"{name}:{tag}"


def fully_qualified(ref: str) -> str:
    """`busybox:latest` -> `docker.io/library/busybox:latest` (what containerd and podman record)."""
    name, tag = split(ref)
    first = name.split("/", 1)[0]
    if "/" in name and ("." in first or ":" in first or first == "localhost"):
        return f"{name}:{tag}"
    if "/" not in name:
        name = f"library/{name}"
    return f"docker.io/{name}:{tag}"


def is_id_prefix(text: str) -> bool:
    """Whether `text` could be an image id or a prefix of one (hex, optionally `sha256:`)."""
    return bool(_HEX_PREFIX.fullmatch(text))


def is_digest_ref(ref: str) -> bool:
    """Whether `ref` names an image by manifest digest (`name@sha256:...`)."""
    return isinstance(ref, str) and "@" in ref


def normalize_digest_ref(ref: str) -> str:
    """The stored form `familiar-name@sha256:...` of a digest reference; raises InvalidReference."""
    remote = parse_remote(ref)
    if remote.digest is None:
        raise InvalidReference(f"invalid reference format: {ref!r} (expected name@sha256:<64 hex>)")
    return remote.familiar_digest_ref


class Remote(NamedTuple):
    """A reference resolved against its registry: host, repository path, tag and/or digest."""

    domain: str  # as written, e.g. "127.0.0.1:5000"; "docker.io" for Docker Hub
    path: str  # repository within the registry, e.g. "library/busybox"
    tag: str | None
    digest: str | None

    @property
    def endpoint(self) -> str:
        """The host the API answers on (Docker Hub's API is not at docker.io)."""
        return HUB_ENDPOINT if self.domain == DOCKER_HUB else self.domain

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        return familiar(self.name)

    @property
    def reference(self) -> str:
        """What the manifest is fetched or pushed by: the digest when given, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def familiar_tag_ref(self) -> str | None:
        """`name:tag` as stored for this reference, or None when it has no tag."""
        return f"{self.familiar_name}:{self.tag}" if self.tag else None

    @property
    def familiar_digest_ref(self) -> str:
        return f"{self.familiar_name}@{self.digest}"

    def with_digest(self, digest: str) -> Remote:
        return Remote(self.domain, self.path, self.tag, digest)

    def with_tag(self, tag: str) -> Remote:
        return Remote(self.domain, self.path, tag, None)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_remote(ref: str) -> Remote:
    """`[host[:port]/]path[:tag][@sha256:...]` -> Remote, with Docker Hub's defaults filled in.

    A first component is a registry host when it holds a dot or a port, or is `localhost`,
    as in Docker's grammar; otherwise the name is on Docker Hub (`busybox` is
    `docker.io/library/busybox`). Without tag and digest the tag is `latest`.
    """
    if not isinstance(ref, str) or not ref or len(ref) > 512:
        raise InvalidReference(f"invalid reference format: {ref!r}")
    rest, _, digest = ref.partition("@")
    if digest and not _DIGEST.fullmatch(digest):
        raise InvalidReference(f"invalid reference format: {ref!r} (digest must be sha256:<64 lowercase hex>)")
    tag = None
    slash, colon = rest.rfind("/"), rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidReference(f"invalid tag format: {tag!r}")
    if not _NAME.fullmatch(rest):
        raise InvalidReference(f"invalid reference format: {ref!r} (repository names must be lowercase)")
    first, sep, path = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        domain = first
    else:
        domain, path = DOCKER_HUB, rest
    if not _PATH.fullmatch(path):
        raise InvalidReference(f"invalid reference format: {ref!r} (repository names must be lowercase)")
    if domain in (DOCKER_HUB, "index.docker.io"):
        domain = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    if len(path) > 255:
        raise InvalidReference(f"invalid reference format: {ref!r} (repository name longer than 255 characters)")
    if tag is None and not digest:
        tag = DEFAULT_TAG
    return Remote(domain, path, tag, digest or None)
