"""How a layer says "deleted" and "opaque", in each form cowstore reads or writes.

OCI (and aufs, whose branches store them as they are): an empty file `.wh.<name>`
deletes `name`; `.wh..wh..opq` in a directory hides everything below it from lower
layers; other `.wh..wh.` names are the union's own bookkeeping and never content.
overlayfs: a 0:0 character device deletes; the `overlay.opaque` xattr set to "y"
makes a directory opaque; the xattrs live under `trusted.` normally and under
`user.` when the mount uses `userxattr` (inside a user namespace).
"""

from __future__ import annotations

import os
import stat

WHITEOUT_PREFIX = ".wh."
META_PREFIX = ".wh..wh."
OPAQUE_MARKER = ".wh..wh..opq"

# The same names as bytes, for code that handles raw directory entries.
WHITEOUT_PREFIX_BYTES = WHITEOUT_PREFIX.encode()
META_PREFIX_BYTES = META_PREFIX.encode()
OPAQUE_MARKER_BYTES = OPAQUE_MARKER.encode()

OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
OVERLAY_OPAQUE = "opaque"


def overlay_xattr(name: str, *, userxattr: bool = False) -> str:
    """The full name of overlay xattr `name` (`opaque`, `redirect`, ...)."""
    return OVERLAY_XATTR_PREFIXES[1 if userxattr else 0] + name


def is_overlay_whiteout(st: os.stat_result) -> bool:
    """An overlay whiteout: a character device with device number 0:0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def whiteout_for(rel: str) -> str:
    """The OCI whiteout entry that deletes `rel` (a path relative to the layer root)."""
    parent, _, base = rel.rpartition("/")
    return f"{parent}/{WHITEOUT_PREFIX}{base}" if parent else f"{WHITEOUT_PREFIX}{base}"
