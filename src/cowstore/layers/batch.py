"""Register the layers of one chain side by side: extract concurrently, publish in order.

Docker extracts an image's layers one after another, each on top of the last. When
every diff id is known in advance (a load or pull reads them from the image config)
and the driver keeps each layer's own changes apart (`Driver.applies_detached`), the
chain ids are known up front and the extractions need not wait for each other: a
small pool extracts every layer into its own storage, and only the short step that
needs the parent's complete tree (`finish_apply`) runs in order, bottom to top, each
layer published once its parent is published and its own digest verified.

The crash model stays the layer store's: every layer is recorded in state `creating`,
under its operation lock, before its storage exists. A layer above another of the
batch cannot name its parent yet (`layers.parent` refers to a published chain id), so
it is recorded with no parent and its depth, and gets the parent when it is published;
recovery removes what a dead batch left, children first, and never touches a published
layer. A failure abandons every layer of the batch that this call made.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from cowstore.digest import Reader, chain_id, check_digest, random_id
from cowstore.errors import CowstoreError, MaxDepthExceeded, Unavailable, space_errors
from cowstore.host import fsutil
from cowstore.layers import ingest
from cowstore.layers.faults import fault
from cowstore.layers.lock import OperationLock
from cowstore.layers.store import MAX_DEPTH

if TYPE_CHECKING:
    from cowstore.layers.records import Layer
    from cowstore.layers.store import LayerStore

WORKERS = 2  # extractions at once: decompression and hashing release the GIL, and so do file syscalls


class PendingLayer(NamedTuple):
    """One layer of a batch: its diff id, and how to open its uncompressed tar (in a worker thread).

    `open` gives a context manager, so that the source can verify what it read (a
    compressed digest) and name the blob in its errors as the block ends.
    """

    diff_id: str
    open: Callable[[], contextlib.AbstractContextManager[Reader]]


class _Stopped(Unavailable):
    """A worker's extraction stopped because another layer of the batch failed."""


class _Stoppable:
    """A stream that stops at its next read once the batch has failed, so no worker runs on."""

    def __init__(self, stream: Reader, stop: threading.Event) -> None:
        self._stream = stream
        self._stop = stop

    def read(self, n: int = -1, /) -> bytes:
        if self._stop.is_set():
            raise _Stopped("stopped: another layer of the image failed")
        return self._stream.read(n)


class _Slot:
    """One layer of the batch as it goes: its storage id, its operation lock, its outcome."""

    __slots__ = ("pending", "chain", "cache_id", "op", "made", "layer")

    def __init__(self, pending: PendingLayer, chain: str, cache_id: str) -> None:
        self.pending = pending
        self.chain = chain
        self.cache_id = cache_id
        self.op: OperationLock | None = None
        self.made = False  # driver storage exists
        self.layer: Layer | None = None  # published (or a concurrent import's, retained)


def applies(store: LayerStore) -> bool:
    """Whether `register_chain` may extract layers of `store` side by side (its driver applies detached)."""
    return store.driver.applies_detached()


def register_chain(
    store: LayerStore,
    pending: Sequence[PendingLayer],
    parent: str | None = None,
    *,
    lease: str | None = None,
    on_layer: Callable[[int], None] | None = None,
) -> list[Layer]:
    """Store `pending` as a chain on top of `parent`; each layer returned with one more reference.

    Only for a store whose driver applies detached (`applies`).
    Returns the layers published, bottom first; fewer than asked when a concurrent
    import of the same chain published one of them first: that one is returned
    (retained), and the caller registers the rest on top of it. `on_layer(i)` is called
    as layer `i` is being finished, in order.
    """
    if not pending:
        return []
    with space_errors("storing layers"):
        for item in pending:
            check_digest(item.diff_id)
        base = store.get(parent) if parent is not None else None
        depth = base.depth if base is not None else 0
        if depth + len(pending) > MAX_DEPTH:
            raise MaxDepthExceeded()
        slots: list[_Slot] = []
        top = parent
        for item in pending:
            top = chain_id(top, item.diff_id)
            slots.append(_Slot(item, top, random_id()))
        stop = threading.Event()
        try:
            _announce(store, slots, parent, depth)
            fault("register:after-insert")
            with concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="extract") as pool:
                try:
                    futures = [pool.submit(_extract, store, slot, stop) for slot in slots]
                    done = _finish_in_order(store, slots, futures, base, lease, on_layer)
                finally:
                    stop.set()  # what still runs (after a failure, or a layer another import won) stops
                    pool.shutdown(wait=True, cancel_futures=True)
            _drop_unpublished(store, slots)  # the layers above one another import won, if any
            return done
        except BaseException:
            _abandon(store, slots, lease)
            raise
        finally:
            for slot in slots:
                if slot.op is not None:
                    slot.op.release()


def _announce(store: LayerStore, slots: list[_Slot], parent: str | None, depth: int) -> None:
    """Record every layer (creating) and make its empty storage, bottom to top."""
    with store.lock.exclusive():
        if parent is not None:
            store.get(parent)  # still there, now under the lock
        for index, slot in enumerate(slots):
            slot.op = OperationLock.announce(
                store.tmp,
                slot.cache_id,
                _recorder(store, slot.cache_id, parent if index == 0 else None, depth + index + 1),
            )
    base_cache = store.get(parent).cache_id if parent is not None else None
    for index, slot in enumerate(slots):
        store.driver.create(slot.cache_id, slots[index - 1].cache_id if index else base_cache)
        slot.made = True


def _recorder(store: LayerStore, cache_id: str, parent: str | None, depth: int) -> Callable[[], None]:
    return lambda: store.records.add_layer(cache_id, parent, depth)


def _extract(store: LayerStore, slot: _Slot, stop: threading.Event) -> tuple[int, str, bytes]:
    """A worker: the layer's first phase, hashed and bounded as the sequential path does."""
    if stop.is_set():
        raise _Stopped("stopped: another layer of the image failed")
    with slot.pending.open() as stream:
        return ingest.extract(
            store.driver,
            slot.cache_id,
            None,
            _Stoppable(stream, stop),
            store.limits,
            slot.pending.diff_id,
            durable=store.sync,
            detached=True,
        )


def _finish_in_order(
    store: LayerStore,
    slots: list[_Slot],
    futures: list[concurrent.futures.Future[tuple[int, str, bytes]]],
    base: Layer | None,
    lease: str | None,
    on_layer: Callable[[int], None] | None,
) -> list[Layer]:
    """Finish and publish each layer once its extraction is done and its parent published."""
    below = base
    done: list[Layer] = []
    for index, (slot, future) in enumerate(zip(slots, futures, strict=True)):
        if on_layer is not None:
            on_layer(index)
        size, diff_id, split = future.result()
        store.driver.finish_apply(slot.cache_id, below.cache_id if below is not None else None)
        if store.sync:
            fsutil.syncfs(store.driver.home)
        fault("register:after-apply")
        with store.lock.exclusive():
            existing = store.retain_if_present(slot.chain, lease)
            if existing is not None:  # a concurrent import of the same layer won: the rest goes on top of it
                slot.layer = existing
                done.append(existing)
                return done
            depth = (below.depth + 1) if below is not None else 1
            parent_chain = below.chain_id if below is not None else None
            store.records.publish(slot.cache_id, slot.chain, diff_id, size, depth, split, lease, parent_chain)
            slot.layer = store.get(slot.chain)
        if slot.op is not None:  # published: no longer an operation a crash leaves half done
            slot.op.release()
            slot.op = None
        fault("register-chain:after-publish")
        done.append(slot.layer)
        below = slot.layer
    return done


def _drop_unpublished(store: LayerStore, slots: Sequence[_Slot]) -> None:
    """Remove the batch's layers that were never published, children first."""
    with store.lock.exclusive():
        for slot in reversed(slots):
            if slot.layer is None or slot.layer.cache_id != slot.cache_id:
                if slot.made:
                    store.driver.remove(slot.cache_id)
                    slot.made = False
                store.records.delete_layer(slot.cache_id)


def _abandon(store: LayerStore, slots: list[_Slot], lease: str | None) -> None:
    """Undo the batch after a failure: the unpublished layers, then the references it took.

    When even that fails (a full disk), the operation locks are left as markers, so the
    next opener's recovery removes what remains.
    """
    try:
        _drop_unpublished(store, slots)
        for slot in reversed(slots):
            if slot.layer is not None:
                store.release(slot.layer.chain_id, lease)
    except (CowstoreError, OSError):
        for slot in slots:
            if slot.op is not None:
                slot.op.leave()
