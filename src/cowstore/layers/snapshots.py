"""Snapshot layers: driver layers written through mounts, the way containerd keeps layers.

An image layer arrives as a tar and is known by its chain id; a snapshot is made empty
on top of a committed parent (`create`), written by whoever mounts it (containerd
extracts a layer into it, or a container runs in it), then frozen under a name
(`commit`) so that children can stack on it. Snapshots live in their own namespaces
and never mix with image layers, but they are layers of this store all the same: the
same driver holds them, the same database records them (`snapshots` table), and the
same recovery and checks cover them. A snapshot is created the way a container layer
is: the record first (state creating, under an operation lock), then the storage; a
killed process leaves a record whose lock is free, and the next opener removes both.

The driver never mounts a snapshot for its user: `external_mounts` describes mounts
that the user (containerd) performs itself, and what those need kept alive (a union
mount, a loop device) is released on commit or removal.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from cowstore.digest import random_id
from cowstore.drivers.driver import MountSpec
from cowstore.errors import AlreadyExists, InUse, InvalidArgument, NotFound
from cowstore.layers.faults import fault
from cowstore.layers.lock import OperationLock
from cowstore.layers.snapshotrecords import Snapshot, SnapshotRecords

if TYPE_CHECKING:
    from cowstore.layers.store import LayerStore


class SnapshotNotFound(NotFound):
    """No snapshot has this key (or name) in the namespace."""


class SnapshotExists(AlreadyExists):
    """The key (or commit name) is taken in the namespace."""


class SnapshotConflict(InUse):
    """The snapshot's kind or children forbid the operation (containerd: failed precondition)."""


def _now() -> int:
    return time.time_ns()


class SnapshotLayers:
    """The snapshots of one layer store; `namespace` None means every namespace at once.

    Without a namespace a key is looked up in whichever namespace holds it (containerd's
    garbage collector walks and removes that way); new snapshots then go to the parent's
    namespace, or to the unnamed one ("").
    """

    def __init__(self, store: LayerStore) -> None:
        self.store = store
        self.records = SnapshotRecords(store.db)

    # ---- lookups ------------------------------------------------------------------

    def get(self, namespace: str | None, key: str) -> Snapshot:
        found = self.records.find(namespace, key)
        if not found:
            raise SnapshotNotFound(f"snapshot {key} does not exist")
        if len(found) > 1:
            spaces = ", ".join(repr(s.namespace) for s in found)
            raise SnapshotConflict(f"snapshot {key} exists in namespaces {spaces}: name one")
        return found[0]

    def snapshots(self, namespace: str | None) -> list[Snapshot]:
        return self.records.snapshots(namespace)

    # ---- changes --------------------------------------------------------------------

    def create(
        self,
        namespace: str | None,
        key: str,
        parent: str | None,
        *,
        kind: Literal["active", "view"],
        labels: Mapping[str, str],
    ) -> tuple[Snapshot, list[MountSpec]]:
        """An empty snapshot on the committed snapshot `parent`, and the mounts that show it."""
        if not key:
            raise InvalidArgument("a snapshot needs a key")
        id = random_id()
        driver = self.store.driver
        with self.store.lock.exclusive():
            base = self.get(namespace, parent) if parent else None
            if base is not None and base.kind != "committed":
                raise SnapshotConflict(f"parent {parent} is not a committed snapshot")
            space = namespace if namespace is not None else (base.namespace if base else "")
            if self.records.taken(namespace, key):
                raise SnapshotExists(f"snapshot {key} already exists")
            op = OperationLock.announce(
                self.store.tmp,
                id,
                lambda: self.records.add(id, space, key, base.id if base else None, kind, dict(labels), _now()),
            )
        try:
            fault("snapshot:after-insert")
            # In an image layer's shape, not a container's: once committed, a snapshot is
            # the parent of others, and another program mounts it, so no compact layout.
            driver.create(id, base.id if base else None)
            fault("snapshot:after-create")
            mounts = driver.external_mounts(id, readonly=kind == "view")
            with self.store.lock.exclusive():
                self.records.set_state(id, "ready")
                return self._by_id(id), mounts
        except BaseException:
            with self.store.lock.exclusive():
                self._drop(id)
            raise
        finally:
            op.release()

    def mounts(self, namespace: str | None, key: str) -> list[MountSpec]:
        with self.store.lock.exclusive():
            snap = self.get(namespace, key)
            if snap.kind == "committed":
                raise SnapshotConflict(f"snapshot {key} is committed: mount an active snapshot or a view of it")
            return self.store.driver.external_mounts(snap.id, readonly=snap.kind == "view")

    def commit(self, namespace: str | None, name: str, key: str, labels: Mapping[str, str]) -> Snapshot:
        """Freeze active snapshot `key` as `name` (the key is gone); only committed snapshots have children."""
        if not name:
            raise InvalidArgument("a committed snapshot needs a name")
        with self.store.lock.exclusive():
            snap = self.get(namespace, key)
            if snap.kind != "active":
                raise SnapshotConflict(f"snapshot {key} is not active")
            if self.records.taken(snap.namespace, name):
                raise SnapshotExists(f"snapshot {name} already exists")
            self.store.driver.release_external(snap.id)
            self.records.commit(snap.id, name, dict(labels), _now())
            return self._by_id(snap.id)

    def remove(self, namespace: str | None, key: str) -> None:
        with self.store.lock.exclusive():
            snap = self.get(namespace, key)
            if self.records.children(snap.id):
                raise SnapshotConflict(f"cannot remove snapshot {key} with child")
            op = OperationLock(self.store.tmp, snap.id)  # the marker a store open looks for
            try:
                self.records.set_state(snap.id, "removing")
                fault("snapshot-remove:after-mark")
                self._drop(snap.id)
            finally:
                op.release()

    def set_labels(self, namespace: str | None, key: str, labels: Mapping[str, str]) -> Snapshot:
        """Replace the labels (an empty value drops a label); stamps the update time."""
        with self.store.lock.exclusive():
            snap = self.get(namespace, key)
            self.records.set_labels(snap.id, {k: v for k, v in labels.items() if v}, _now())
            return self._by_id(snap.id)

    def usage(self, namespace: str | None, key: str) -> tuple[int, int]:
        """(bytes, inodes) of the snapshot's own changes: measured once for a committed one,
        every time for an active one, which is still being written."""
        with self.store.lock.shared():
            snap = self.get(namespace, key)
        if snap.size is not None and snap.inodes is not None:
            return snap.size, snap.inodes
        changes = self.store.driver.changes(snap.id, snap.parent)
        inodes = sum(1 for change in changes if change.kind != "D")
        size = self.store.driver.diff_size(snap.id, snap.parent)
        if snap.kind == "committed":
            with self.store.lock.exclusive():
                self.records.set_usage(snap.id, size, inodes)
        return size, inodes

    # ---- recovery -------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Remove what killed processes left creating or removing (store lock held).

        A removal runs under the store lock from start to end, so one found half done
        is always dead; a creation runs outside it and is dead when its lock is free.
        """
        done = []
        for snap in self.records.unfinished():
            if snap.state == "creating" and not OperationLock.abandoned(self.store.tmp, snap.id):
                continue
            self._drop(snap.id)
            OperationLock.clear(self.store.tmp, snap.id)
            done.append(f"removed unfinished snapshot {snap.key!r} of namespace {snap.namespace!r}")
        return done

    def unfinished_ids(self) -> list[str]:
        return [snap.id for snap in self.records.unfinished()]

    def _drop(self, id: str) -> None:
        """Storage first, record last (store lock held): a crash in between is found again."""
        self.store.driver.release_external(id)
        self.store.driver.remove(id)
        self.records.delete(id)

    def _by_id(self, id: str) -> Snapshot:
        snap = self.records.by_id(id)
        if snap is None:
            raise SnapshotNotFound(f"snapshot {id} vanished")
        return snap
