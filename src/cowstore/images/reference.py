"""Image references (`name:tag`) with Docker's grammar and its familiar short forms.

References are stored in the familiar form Docker prints (`busybox:latest`, not
`docker.io/library/busybox:latest`) so that a tag typed either way finds the image.
"""

from __future__ import annotations

import re

from cowstore.images.errors import InvalidReference

DEFAULT_TAG = "latest"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)"
_NAME = re.compile(rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)  # Go's \w: ASCII only, no look-alike letters
_ANONYMOUS = re.compile(r"[a-f0-9]{64}")
_HEX_PREFIX = re.compile(r"(?:sha256:)?[0-9a-f]{1,64}")


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
