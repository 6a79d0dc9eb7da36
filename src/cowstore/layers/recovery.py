"""Crash recovery of a layer store: finish what killed processes left half done.

Every operation that creates or removes storage holds an operation lock
(`layers.lock.OperationLock`) from before its record appears until the record is
final. A record in state creating or removing whose lock is free was left by a
dead process; its storage is removed, then its record, then its lock file. The
lock file goes last, so a crash during recovery leaves the marker for the next
opener, and a store with no free lock file has nothing to recover.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from cowstore.layers import initlayers
from cowstore.layers.lock import OperationLock

if TYPE_CHECKING:
    from cowstore.layers.store import LayerStore

# The ids `cowstore.digest.random_id` gives layers and operations (leases have a prefix).
_STORAGE_ID = re.compile(r"[0-9a-f]{64}")


def recover(store: LayerStore) -> list[str]:
    """Finish every interrupted operation of `store` (its lock held); returns what was done."""
    done: list[str] = []
    for rw in store.records.unfinished_mounts():
        if OperationLock.abandoned(store.tmp, rw.mount_id):
            initlayers.drop_storage(store.driver, store.records, rw.name, rw.mount_id, rw.init_id)
            store.records.delete_mount(rw.name)
            OperationLock.clear(store.tmp, rw.mount_id)
            done.append(f"removed unfinished container layer {rw.name}")
            if rw.parent:
                store.collect(rw.parent)
    for unfinished in store.records.unfinished_layers():
        if OperationLock.abandoned(store.tmp, unfinished.cache_id):
            store.driver.remove(unfinished.cache_id)
            store.records.delete_layer(unfinished.cache_id)
            OperationLock.clear(store.tmp, unfinished.cache_id)
            done.append(f"removed unfinished layer {unfinished.cache_id}")
            if unfinished.parent:
                store.collect(unfinished.parent)
    done += store.snapshots.recover()
    for lease_id in store.records.lease_ids():
        if OperationLock.abandoned(store.tmp, lease_id):
            store.release_lease(lease_id)
            OperationLock.clear(store.tmp, lease_id)
            done.append(f"released the references of interrupted operation {lease_id}")
    leftover = OperationLock.interrupted(store.tmp)  # died before recording, or after finishing
    if leftover:
        done += _unrecorded_storage(store, leftover)
    for op_id in leftover:
        OperationLock.clear(store.tmp, op_id)
    OperationLock.sweep_private(store.tmp)
    return done


def _unrecorded_storage(store: LayerStore, op_ids: list[str]) -> list[str]:
    """Remove the storage that interrupted operations made and that no record names.

    A power loss can keep a container layer's storage and lose the record made before
    it, when that record was not durable (see `LayerStore.create_rw`): the marker,
    linked before both, is what is left to tell. Storage goes as `<id>` and `<id>-init`.
    """
    named = store.records.storage_ids() | store.snapshots.records.ids()
    done = []
    for op_id in op_ids:
        if not _STORAGE_ID.fullmatch(op_id):
            continue  # a lease: it names no storage
        for id in (op_id, f"{op_id}-init"):
            if id not in named and store.driver.exists(id):
                store.driver.remove(id)
                done.append(f"removed storage {id} that an interrupted operation left without a record")
    return done
