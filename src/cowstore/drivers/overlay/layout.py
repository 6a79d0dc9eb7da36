"""The directory of an overlay driver home: layer ids, listing, removal.

Both overlay drivers keep one directory per layer id in their home, next to their
own bookkeeping entries (`l/` short links, `mountpoints/` counts).
"""

from __future__ import annotations

import os
import pathlib

from cowstore.drivers.common import ids, transit
from cowstore.drivers.common.refcount import RefCount
from cowstore.drivers.overlay.kernel import unmount
from cowstore.errors import InvalidOption
from cowstore.host import fsutil

# Layer ids become directory names next to the driver's own bookkeeping entries.
_RESERVED_IDS = {"l", "mountpoints"}


def check_id(id: str) -> str:
    """Refuse ids that would escape the home or collide with the driver's own entries."""
    if id in _RESERVED_IDS:
        raise InvalidOption(f"invalid layer id {id!r}: the name is reserved by the overlay drivers")
    return ids.check_id(id)


def layer_ids(home: pathlib.Path) -> list[str]:
    """Layer directories of an overlay driver home (not `l/`, counts, or staging dirs)."""
    with os.scandir(home) as it:
        return sorted(
            e.name
            for e in it
            if e.is_dir(follow_symlinks=False) and not e.name.startswith(".") and e.name not in _RESERVED_IDS
        )


def layer_exists(home: pathlib.Path, id: str) -> bool:
    """Whether layer `id` exists in an overlay driver home (an invalid id never does)."""
    try:
        return (home / check_id(id)).is_dir()
    except InvalidOption:
        return False


def remove_layer(home: pathlib.Path, layer: pathlib.Path, id: str, ref: RefCount) -> None:
    """Unmount a layer, then delete it under a `-removing` name.

    Renaming first means a crash half-way through the deletion leaves nothing under
    the layer's id; the driver sweeps `-removing` leftovers when it starts. The caller
    holds the id's lock (`ref`) throughout, which keeps that sweep off this one.
    """
    unmount(layer / "merged")
    ref.reset()
    doomed = transit.transit_path(home, id, transit.REMOVING)
    os.rename(layer, doomed)
    fsutil.remove_tree(doomed)
