"""Branches of a union and aufs' on-disk naming rules (whiteouts, opaque dirs, metadata).

A branch is an ordinary directory. Deletions are empty files `.wh.<name>`, an opaque
directory holds `.wh..wh..opq`, and names starting with `.wh..wh.` are the union's own
bookkeeping; none of these are ever shown through the mount. This is exactly the OCI
changeset format, which is why a layer's branch directory can be tarred as its diff.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cowstore.archive.whiteouts import WHITEOUT_PREFIX_BYTES
from cowstore.errors import InvalidArgument

MODES = ("rw", "ro", "ro+wh")


class BranchError(InvalidArgument):
    """A branch specification is malformed or names no directory."""


@dataclass(frozen=True)
class Branch:
    """One branch: its absolute directory and aufs mode (`rw`, `ro`, `ro+wh`)."""

    path: bytes
    mode: str

    @property
    def writable(self) -> bool:
        return self.mode == "rw"

    def __str__(self) -> str:
        return f"{os.fsdecode(self.path)}={self.mode}"


def parse_branch(spec: str) -> Branch:
    """Parse `DIR=MODE` (MODE defaults to `ro+wh`), as aufs' `br:` option spells it."""
    path, sep, mode = spec.rpartition("=")
    if not sep:
        path, mode = spec, "ro+wh"
    if mode not in MODES:
        raise BranchError(f"branch {spec!r}: mode must be one of {', '.join(MODES)}")
    if not os.path.isdir(path):
        raise BranchError(f"branch {spec!r}: {path} is not a directory")
    return Branch(os.fsencode(os.path.abspath(path)), mode)


def whiteout(name: bytes) -> bytes:
    """The whiteout file name that hides `name` in lower branches."""
    return WHITEOUT_PREFIX_BYTES + name


def is_reserved(name: bytes) -> bool:
    """Names the union never shows and refuses to create (`.wh.*`)."""
    return name.startswith(WHITEOUT_PREFIX_BYTES)
