"""Consistency checks of a layer store: what `cowstore check` finds and repairs.

Recovery at open already finishes operations whose process died; these checks also
find what no single operation could leave behind (storage with no record, records with
no storage, reference counts that disagree with their owners, content that no longer
hashes to its diff id), and report each as a Problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cowstore.errors import CowstoreError, NotSupported
from cowstore.layers.lock import OperationLock

if TYPE_CHECKING:
    from cowstore.layers.records import Layer
    from cowstore.layers.store import LayerStore


@dataclass
class Problem:
    """One inconsistency found by a check."""

    kind: str
    subject: str
    detail: str
    repaired: bool = False

    def __str__(self) -> str:
        state = "repaired" if self.repaired else "found"
        return f"{state}: {self.kind} {self.subject}: {self.detail}"


def check(
    store: LayerStore, *, repair: bool, verify_content: bool, expected_refs: Mapping[str, int] | None
) -> list[Problem]:
    """All checks, in the order that lets each repair help the next (store lock held)."""
    problems = _unfinished(store, repair)
    problems += _stale_mounts(store, repair)
    problems += _storage(store, repair)
    if expected_refs is not None:
        problems += _refcounts(store, held_references(store, expected_refs), repair)
    if verify_content:
        for layer in store.layers():
            try:
                store.verify(layer.chain_id)
            except CowstoreError as exc:
                problems.append(Problem("corrupt", layer.chain_id, str(exc)))
    return problems


def _unfinished(store: LayerStore, repair: bool) -> list[Problem]:
    problems = []
    for op_id in [*store.records.unfinished_operation_ids(), *store.snapshots.unfinished_ids()]:
        if OperationLock.abandoned(store.tmp, op_id):
            problems.append(Problem("unfinished", op_id, "operation interrupted by a crash"))
    if repair and problems:
        store.recover()
        for problem in problems:
            problem.repaired = True
    return problems


def _stale_mounts(store: LayerStore, repair: bool) -> list[Problem]:
    """Mounts left by a FUSE server that died: they answer ENOTCONN to every access.

    A container's next mount or umount re-establishes its mount by itself; repairing
    detaches the dead mount and records the container as unmounted.
    """
    owners = {rw.mount_id: rw for rw in store.rw_layers()}
    owners.update({rw.init_id: rw for rw in store.rw_layers() if rw.init_id})
    layers = {layer.cache_id: layer.chain_id for layer in store.layers()}
    problems = []
    for id in store.driver.stale_mounts():
        rw = owners.get(id)
        subject = rw.name if rw is not None else layers.get(id, id)
        detail = f"{store.driver.name} mount of {id} is served by no live server (it died); it answers ENOTCONN"
        problem = Problem("stale-mount", subject, detail)
        if repair:
            store.driver.clear_stale_mount(id)
            if rw is not None and id == rw.mount_id:
                store.records.reset_mount_count(rw.name)
            problem.repaired = True
        problems.append(problem)
    return problems


def orphan_storage(store: LayerStore) -> list[str]:
    """Driver layers that no record names and no live operation is building (lock held).

    Docker's "orphan overlay2 directories": storage a crash or a hand edit left behind.
    """
    try:
        on_disk = set(store.driver.ids())
    except NotSupported:
        return []
    orphans = sorted(on_disk - store.records.storage_ids() - store.snapshots.records.ids())
    return [orphan for orphan in orphans if OperationLock.abandoned(store.tmp, orphan.removesuffix("-init"))]


def _storage(store: LayerStore, repair: bool) -> list[Problem]:
    problems: list[Problem] = []
    for orphan in orphan_storage(store):
        problem = Problem("orphan-storage", orphan, f"{store.driver.name} layer with no record")
        if repair:
            store.driver.remove(orphan)
            problem.repaired = True
        problems.append(problem)
    for layer in store.layers():
        if not store.driver.exists(layer.cache_id):
            detail = f"driver layer {layer.cache_id} is gone; re-import the image"
            problems.append(Problem("missing-storage", layer.chain_id, detail))
    for snap in store.snapshots.snapshots(None):
        if not store.driver.exists(snap.id):
            detail = f"storage {snap.id} of snapshot {snap.key!r} (namespace {snap.namespace!r}) is gone"
            problems.append(Problem("missing-storage", snap.id, detail))
    for rw in store.rw_layers():
        missing = [i for i in (rw.mount_id, rw.init_id) if i and not store.driver.exists(i)]
        if missing:
            problem = Problem("missing-storage", rw.name, f"container layer storage {', '.join(missing)} is gone")
            if repair:
                store.remove_rw(rw.name, force=True)
                problem.repaired = True
            problems.append(problem)
    return problems


def held_references(store: LayerStore, owners: Mapping[str, int]) -> dict[str, int]:
    """The references on each layer that someone holds: its `owners` (images) and live leases."""
    held = dict(owners)
    for chain, count in store.records.lease_counts().items():
        held[chain] = held.get(chain, 0) + count
    return held


def _refcounts(store: LayerStore, expected: Mapping[str, int], repair: bool) -> list[Problem]:
    problems: list[Problem] = []
    for layer in store.layers():
        want = expected.get(layer.chain_id, 0)
        if layer.refcount == want:
            continue
        problem = Problem("refcount", layer.chain_id, f"{layer.refcount} references recorded, {want} held")
        if repair:
            store.records.set_refcount(layer.chain_id, want)
            problem.repaired = True
        problems.append(problem)
    if repair:
        for layer in store.layers():
            store.collect(layer.chain_id)
    return problems


def prune(store: LayerStore, owners: Mapping[str, int]) -> tuple[list[Layer], list[str]]:
    """Delete the layers nobody uses and the storage no record names (store lock held).

    A layer is used by the references its `owners` (images) and live operations hold,
    by child layers and by containers; references beyond those were leaked by a crash
    or a bug. Returns the deleted layers and the orphan driver ids removed.
    """
    held = held_references(store, owners)
    for layer in store.layers():
        if layer.refcount > held.get(layer.chain_id, 0):
            store.records.set_refcount(layer.chain_id, held.get(layer.chain_id, 0))
    deleted: list[Layer] = []
    for layer in sorted(store.layers(), key=lambda found: found.depth, reverse=True):
        deleted += store.collect(layer.chain_id)
    orphans = orphan_storage(store)
    for orphan in orphans:
        store.driver.remove(orphan)
    return deleted, orphans
