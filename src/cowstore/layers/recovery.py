"""Crash recovery of a layer store: finish what killed processes left half done.

Every operation that creates or removes storage holds an operation lock
(`layers.lock.OperationLock`) from before its record appears until the record is
final. A record in state creating or removing whose lock is free was left by a
dead process; its storage is removed, then its record, then its lock file. The
lock file goes last, so a crash during recovery leaves the marker for the next
opener, and a store with no free lock file has nothing to recover.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cowstore.layers import initlayers
from cowstore.layers.lock import OperationLock

if TYPE_CHECKING:
    from cowstore.layers.store import LayerStore


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
    for op_id in OperationLock.interrupted(store.tmp):  # died before recording, or after finishing
        OperationLock.clear(store.tmp, op_id)
    OperationLock.sweep_private(store.tmp)
    return done
