"""A layer may not write through a symlink it created itself.

A tar that creates `a -> b` and then `a/f` gave a different tree per driver (vfs and
devicemapper followed the link inside the root, overlay2 and aufs made a real directory
`a`), and the layer could not be saved again: its re-export reads each payload back by
the entry's name, and `a/f` was not where the name says (a later `b/f` overwrote it).
Tars made from real trees (docker, buildah, `tar c`) never do this; the refusal is the
same on every driver. Whiteouts act on lower layers only (OCI image spec), and repeated
or replaced entries round-trip through the tar-split, so neither needs a rule here.
"""

from __future__ import annotations

from cowstore.errors import ArchiveError


class OwnEntries:
    """The symlinks the layer being applied has created so far."""

    def __init__(self) -> None:
        self._links: set[str] = set()

    def check_parent(self, parts: list[str], name: str) -> None:
        """Refuse an entry whose path passes through a symlink of this layer."""
        if not self._links:
            return
        prefix = ""
        for part in parts[:-1]:
            prefix = f"{prefix}/{part}" if prefix else part
            if prefix in self._links:
                raise ArchiveError("writes through a symlink of its own layer", name)

    def record(self, rel: str, kind: str) -> None:
        self._links.discard(rel)
        if kind == "symlink":
            self._links.add(rel)
