"""OCI image configs: validating the ones we import and writing the ones we create.

The config is kept as the exact bytes received, because the image id is the sha256 of
those bytes; re-serialising it would change the id of every imported image.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

from cowstore.digest import check_digest
from cowstore.errors import InvalidDigest
from cowstore.images.errors import BadImageArchive

MAX_JSON = 16 * 1024 * 1024  # a config, manifest or index larger than this is refused
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x"}


def host_architecture() -> str:
    """The GOARCH-style name of this machine, as images record it."""
    machine = os.uname().machine
    return _ARCH.get(machine, machine)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: object) -> float:
    """An RFC 3339 timestamp from a config as epoch seconds (0 when absent or unreadable)."""
    if not isinstance(value, str) or not value:
        return 0.0
    text = value.replace("Z", "+00:00")
    if "." in text:  # Go writes nanoseconds; Python parses at most microseconds
        head, _, rest = text.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def load_json(raw: bytes, what: str) -> Any:
    if len(raw) > MAX_JSON:
        raise BadImageArchive(f"{what} is larger than {MAX_JSON} bytes")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadImageArchive(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadImageArchive(f"{what} is nested too deeply") from None


def parse_config(raw: bytes, what: str = "image config") -> dict:
    """Validate an image config; its `rootfs.diff_ids` must be well-formed digests."""
    config = load_json(raw, what)
    if not isinstance(config, dict):
        raise BadImageArchive(f"{what} is not a JSON object")
    rootfs = config.get("rootfs")
    if (
        not isinstance(rootfs, dict)
        or rootfs.get("type") != "layers"
        or not isinstance(rootfs.get("diff_ids", []), list)
    ):
        raise BadImageArchive(f"{what} has no rootfs of type layers")
    for diff_id in rootfs.get("diff_ids") or []:
        try:
            check_digest(diff_id)
        except InvalidDigest as exc:
            raise BadImageArchive(f"{what}: {exc}") from None
    _check_history(config.get("history"), what)
    return config


_HISTORY_FIELDS = {"created": str, "created_by": str, "author": str, "comment": str, "empty_layer": bool}


def _check_history(history: object, what: str) -> None:
    """History must be a list of objects with typed fields (as Docker's own config type requires),
    or `history` and `inspect` would fail on an image that loaded."""
    if history is None:
        return
    if not isinstance(history, list):
        raise BadImageArchive(f"{what}: history is not a JSON array")
    for number, entry in enumerate(history):
        if not isinstance(entry, dict):
            raise BadImageArchive(f"{what}: history entry {number} is not a JSON object")
        for key, kind in _HISTORY_FIELDS.items():
            if key in entry and not isinstance(entry[key], kind):
                raise BadImageArchive(f"{what}: history entry {number}: {key} must be a {kind.__name__}")


def diff_ids(config: dict) -> list[str]:
    return list(config.get("rootfs", {}).get("diff_ids") or [])


def encode(config: dict) -> bytes:
    """Serialise a config we create (compact, key order kept: the id is its sha256)."""
    return json.dumps(config, separators=(",", ":"), ensure_ascii=False).encode()


def rootfs_config(diff_id: str, *, comment: str, created_by: str, cmd: list[str] | None = None) -> dict:
    """The config of a one-layer image imported from a root filesystem tar (`docker import`)."""
    created = now_rfc3339()
    inner: dict[str, Any] = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
    if cmd:
        inner["Cmd"] = cmd
    history: dict[str, Any] = {"created": created, "created_by": created_by}
    if comment:
        history["comment"] = comment
    return {
        "architecture": host_architecture(),
        "os": "linux",
        "created": created,
        "config": inner,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [history],
    }


def committed_config(base: dict, diff_id: str, *, container: str, comment: str, author: str) -> dict:
    """The config of a commit: the base image's, with one more layer and history entry."""
    created = now_rfc3339()
    config = json.loads(json.dumps(base))
    config["created"] = created
    config["container"] = container
    if author:
        config["author"] = author
    config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    config["rootfs"]["diff_ids"] = diff_ids(base) + [diff_id]
    entry: dict[str, Any] = {"created": created, "created_by": f"cowstore commit {container[:12]}"}
    if comment:
        entry["comment"] = comment
    if author:
        entry["author"] = author
    config["history"] = list(base.get("history") or []) + [entry]
    return config
