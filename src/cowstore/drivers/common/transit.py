"""Layers in transit, and what a driver leaves behind: start-up sweeps and shutdown.

A driver builds or deletes a layer under a temporary name, `.<id>-<random>-creating`
or `-removing`, while it holds the layer's per-id lock, so a crash never leaves a
half-done layer under its id. Opening a driver sweeps such leftovers, but only those
whose lock nobody holds: another process may be building or deleting that very layer
right now, and its directory must not vanish under it.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

from cowstore.drivers.common import ids
from cowstore.drivers.common.refcount import MountRefs
from cowstore.errors import InvalidOption
from cowstore.host import fsutil, mounts

CREATING = "creating"
REMOVING = "removing"


def transit_path(directory: pathlib.Path, id: str, purpose: str) -> pathlib.Path:
    """A fresh temporary name in `directory` for layer `id` being created or removed.

    Ids never start with a dot, so these names cannot collide with a layer's.
    """
    return directory / f".{id}-{os.urandom(4).hex()}-{purpose}"


def transit_id(name: str) -> str | None:
    """The layer id of a `transit_path` name; None for any other name."""
    if not name.startswith("."):
        return None
    parts = name[1:].rsplit("-", 2)
    if len(parts) != 3 or parts[2] not in (CREATING, REMOVING):
        return None
    return valid_id(parts[0])


def valid_id(id: str) -> str | None:
    """`id` if it is a well-formed layer id (safe to name a lock file), else None."""
    try:
        return ids.check_id(id)
    except InvalidOption:
        return None


def sweep(
    directory: pathlib.Path,
    refs: MountRefs,
    id_of: Callable[[str], str | None] = transit_id,
    remove: Callable[[pathlib.Path], None] = fsutil.remove_tree,
) -> None:
    """Delete the leftovers in `directory` (names `id_of` maps to an id) nobody is working on.

    `id_of` is asked again under the lock: what it looks at may have changed meanwhile.
    """
    with os.scandir(directory) as it:
        names = [entry.name for entry in it]
    for name in names:
        id = id_of(name)
        if id is None:
            continue
        with refs.try_locked(id) as ref:
            if ref is not None and id_of(name) == id:
                remove(directory / name)


def unmount_below(home: pathlib.Path) -> None:
    """Lazily unmount everything below `home` (not `home` itself, which may be a mount)."""
    top = os.path.realpath(home)
    for point in mounts.mounts_under(home):
        if point != top:
            mounts.umount(point, mounts.MNT_DETACH)
