"""Entries of one layer that undo earlier entries of the same layer are refused.

A stored layer is re-exported byte for byte from its tree plus its tar-split, which reads
each file's payload back by the entry's name. So every payload the tar carried must still
be in the tree, under its own name, when the layer is done: a layer may not write
through a symlink it created (`a -> b`, then `a/f`: the payload lands in b/f, and on
overlay2 and aufs it would land in a real directory `a` instead), or replace a file with
a payload that it wrote itself (whiteouts already act on lower layers only, as the OCI
image spec says, so they never remove this layer's entries). Tars made from real trees (docker, buildah,
`tar c`) never do any of this; the refusal is the same on every driver.
"""

from __future__ import annotations

from cowstore.errors import ArchiveError


class OwnEntries:
    """What the layer being applied has created so far, to refuse entries that undo it."""

    def __init__(self) -> None:
        self._links: set[str] = set()
        self._files: set[str] = set()
        self._holding: set[str] = set()  # directories above a file with a payload

    def check_parent(self, parts: list[str], name: str) -> None:
        """Refuse an entry whose path passes through a symlink of this layer."""
        prefix = ""
        for part in parts[:-1]:
            prefix = f"{prefix}/{part}" if prefix else part
            if prefix in self._links:
                raise ArchiveError("writes through a symlink of its own layer", name)

    def check_replace(self, rel: str, is_dir: bool, name: str) -> None:
        """Refuse an entry that replaces a file of this layer, or a directory holding some."""
        if rel in self._files:
            raise ArchiveError("replaces a file of its own layer", name)
        if rel in self._holding and not is_dir:
            raise ArchiveError("replaces a directory holding files of its own layer", name)

    def record(self, rel: str, kind: str, size: int) -> None:
        self._links.discard(rel)
        if kind == "symlink":
            self._links.add(rel)
        elif kind == "file" and size > 0:
            self._files.add(rel)
            parent = rel.rpartition("/")[0]
            while parent and parent not in self._holding:
                self._holding.add(parent)
                parent = parent.rpartition("/")[0]
