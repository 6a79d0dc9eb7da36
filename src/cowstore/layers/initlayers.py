"""The `-init` layers under container layers: shared by the containers of one image.

Docker makes `<mount id>-init` for every container, though what it holds (the mount
targets a runtime binds over) is the same for every container of an image. The layer
store makes one `<parent>-init` per image layer instead, with the first container on
it, and removes it with the last: a container then costs its own layer alone, and
creating one needs no mount to fill an `-init` layer. Which container layers sit on an
`-init` layer is what the mounts table says (its `init_id` column), so crash recovery
and `check` need nothing new.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from cowstore.drivers.driver import Driver
from cowstore.layers.lock import OperationLock
from cowstore.layers.records import LayerRecords

if TYPE_CHECKING:
    from cowstore.layers.store import LayerStore


def shared_id(parent_cache: str | None) -> str:
    """The `-init` layer shared by the containers of `parent_cache` (None: of no image).

    Cut short enough for a driver to keep it in an inode (overlay's note of a container's lower).
    """
    return f"{(parent_cache or 'scratch')[:32]}-init"


def needs_making(store: LayerStore, name: str, init_id: str) -> bool:
    """Whether container layer `name` must make `init_id` (store lock held, before its record).

    It is complete when another container layer sits on it that is ready, or being
    made by a live process: those made it, or found it made, under the store lock.
    Anything else by that name is what a crash left half filled.
    """
    if store.records.init_used(init_id, other_than=name, state="ready"):
        return False
    return all(
        OperationLock.abandoned(store.tmp, mount_id)
        for mount_id in store.records.unready_init_users(init_id, other_than=name)
    )


def make_shared(
    store: LayerStore,
    name: str,
    op: OperationLock,
    init_id: str,
    parent_cache: str | None,
    init: Callable[[pathlib.Path], None],
) -> None:
    """Make `init_id` afresh (store lock held), over whatever a crash left by that name.

    On failure, container layer `name`, whose record came first, is gone: its record,
    then its operation `op`.
    """
    try:
        store.driver.remove(init_id)
        store.driver.create_rw(init_id, parent_cache)
        try:
            store.driver.fill(init_id, init)
        except BaseException:
            store.driver.remove(init_id)
            raise
    except BaseException:
        store.records.delete_mount(name)
        op.release()
        raise


def drop_storage(driver: Driver, records: LayerRecords, name: str, mount_id: str, init_id: str | None) -> None:
    """Remove the storage of container layer `name`, and its `-init` layer unless another shares it."""
    driver.remove(mount_id)
    if init_id and not records.init_used(init_id, other_than=name):
        driver.remove(init_id)
