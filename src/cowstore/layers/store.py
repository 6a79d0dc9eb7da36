"""The layer store: content-addressed read-only layers and container layers over a driver.

It knows chain ids, diff ids, references and crash recovery, and nothing of any
particular driver: everything on disk beyond the database goes through the Driver
interface, and every row through LayerRecords. Every mutation is staged, verified and
then published in one transaction, with a state column that tells the next opener what
a killed process left half done.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, BinaryIO

from cowstore.archive.limits import Limits
from cowstore.digest import DigestingReader, Reader, Writer, chain_id, check_digest, random_id
from cowstore.drivers.driver import Driver
from cowstore.errors import (
    ArchiveError,
    CowstoreError,
    LayerExists,
    LayerInUse,
    LayerNotFound,
    LayerNotRetained,
    MaxDepthExceeded,
    NotMounted,
    StagingSpaceExhausted,
    space_errors,
)
from cowstore.host import fsutil
from cowstore.layers import initlayers
from cowstore.layers.faults import fault
from cowstore.layers.lock import OperationLock, StoreLock
from cowstore.layers.records import Layer, LayerRecords, RWLayer
from cowstore.layers.snapshots import SnapshotLayers
from cowstore.metadata.db import DATABASE_FILE, Database

if TYPE_CHECKING:
    from cowstore.archive.changes import Change
    from cowstore.layers.consistency import Problem

    # A store opened for listings passes an opener: the driver is opened on first use.
    DriverOrOpener = Driver | Callable[[], Driver]

MAX_DEPTH = 1000  # a sanity bound; drivers enforce their own (overlay2: 500 lowers)


class LayerStore:
    """Layers of one store root (`<root>/cowstore.db`) kept by one driver."""

    def __init__(
        self, root: str | os.PathLike, driver: DriverOrOpener, *, sync: bool = True, limits: Limits | None = None
    ) -> None:
        self.root = pathlib.Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Layers hold setuid binaries and device nodes: no other user may reach them.
        os.chmod(self.root, 0o700)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(mode=0o700, exist_ok=True)
        self._driver = driver if isinstance(driver, Driver) else None
        self._open_driver = (lambda: driver) if isinstance(driver, Driver) else driver
        self._driver_lock = threading.Lock()
        self.sync = sync
        fsutil.raise_fd_limit()
        self.limits = limits or Limits()
        self.lock = StoreLock(self.root / "store.lock")
        self.db = Database(self.root / DATABASE_FILE, durable=sync)
        self.records = LayerRecords(self.db)
        self.snapshots = SnapshotLayers(self)
        if self.db.needs_migration():
            with self.lock.exclusive():
                self.db.migrate()
        # Only a process that died mid-operation leaves work for an opener (its lock file says so).
        self.interrupted = OperationLock.interrupted(self.tmp)
        if self.interrupted:
            self.recover()

    @property
    def driver(self) -> Driver:
        if self._driver is not None:  # every operation asks: no lock once it is open
            return self._driver
        with self._driver_lock:  # threads of one service share the store: open it once
            if self._driver is None:
                self._driver = self._open_driver()
            return self._driver

    @property
    def opened_driver(self) -> Driver | None:
        """The driver if it was opened; None while a listing has not needed it."""
        return self._driver

    def close(self) -> None:
        self.db.close()
        self.lock.close()

    # ---- crash recovery -------------------------------------------------------------

    def recover(self) -> list[str]:
        """Finish what killed processes left in state creating/removing; return what was done."""
        from cowstore.layers import recovery

        with self.lock.exclusive():
            return recovery.recover(self)

    # ---- read-only layers -----------------------------------------------------------

    def get(self, chain: str) -> Layer:
        layer = self.records.layer(chain)
        if layer is None:
            raise LayerNotFound(f"layer does not exist: {chain}")
        return layer

    def layers(self) -> list[Layer]:
        return self.records.layers()

    def chain(self, chain: str) -> list[Layer]:
        """The layer and its ancestors, top first."""
        result = [self.get(chain)]
        while result[-1].parent:
            result.append(self.get(result[-1].parent))
        return result

    def total_size(self, chain: str) -> int:
        return sum(layer.size for layer in self.chain(chain))

    def register(
        self,
        stream: Reader,
        parent: str | None = None,
        *,
        expected_diff_id: str | None = None,
        lease: str | None = None,
    ) -> Layer:
        """Store an uncompressed layer tar on top of `parent`; returns it with one more reference.

        The tar is extracted as it streams in, hashed and strictly parsed on the way,
        into a layer that stays invisible (state `creating`) until its digest is
        verified: a stream that does not hash to `expected_diff_id`, or that raises
        (at its end, say), leaves nothing behind. A layer whose chain id is already
        stored is not extracted again. With `lease`, the new reference belongs to that
        lease until it is handed over (see `lease`).
        A full disk leaves nothing behind and fails as NoSpace.
        """
        with space_errors("storing a layer"):
            if expected_diff_id is not None:
                check_digest(expected_diff_id)
            parent_layer = self.get(parent) if parent is not None else None
            if parent_layer is not None and parent_layer.depth >= MAX_DEPTH:
                raise MaxDepthExceeded()
            if expected_diff_id is not None and self.records.layer(chain_id(parent, expected_diff_id)) is not None:
                reader = DigestingReader(stream)  # read it through all the same: its source may check its end
                reader.drain()
                reader.verify(expected_diff_id, "layer")
                existing = self.retain_if_present(chain_id(parent, expected_diff_id), lease)
                if existing is not None:
                    return existing
            from cowstore.layers.ingest import extract

            cache_id = random_id()
            with self.lock.exclusive():
                parent_layer = self.get(parent) if parent is not None else None
                op = OperationLock.announce(self.tmp, cache_id, lambda: self.records.add_layer(cache_id, parent))
            try:
                fault("register:after-insert")
                parent_cache = parent_layer.cache_id if parent_layer else None
                self.driver.create(cache_id, parent_cache)
                size, diff_id, split = extract(
                    self.driver, cache_id, parent_cache, stream, self.limits, expected_diff_id, durable=self.sync
                )
                fault("register:after-apply")
                return self._publish(cache_id, chain_id(parent, diff_id), diff_id, parent_layer, size, split, lease)
            except BaseException:
                _undo_or_leave(op, lambda: self._abandon_layer(cache_id))
                raise
            finally:
                op.release()

    def retain_if_present(self, chain: str, lease: str | None = None) -> Layer | None:
        """One more reference on `chain` (under `lease`, if given) if it is stored; else None.

        A pull or an import asks before fetching, so a layer already here is not fetched again.
        """
        with self.lock.exclusive():
            if self.records.layer(chain) is None:
                return None
            self.records.retain(chain, lease)
            return self.get(chain)

    def _publish(
        self, cache_id: str, chain: str, diff_id: str, parent: Layer | None, size: int, split: bytes, lease: str | None
    ) -> Layer:
        with self.lock.exclusive():
            existing = self.retain_if_present(chain, lease)
            if existing is not None:  # a concurrent import of the same layer won
                self._abandon_layer(cache_id)
                return existing
            self.records.publish(cache_id, chain, diff_id, size, (parent.depth + 1) if parent else 1, split, lease)
            return self.get(chain)

    def _abandon_layer(self, cache_id: str) -> None:
        """Undo a layer that was never published (its row is still `creating`).

        Storage first: after a full disk, that frees the room the row's deletion needs;
        a crash in between leaves the row to recovery, which removes it again.
        """
        with self.lock.exclusive():
            self.driver.remove(cache_id)
            self.records.delete_layer(cache_id)

    def release(self, chain: str, lease: str | None = None) -> list[Layer]:
        """Drop one reference (of `lease`, if given); delete the layer and unused ancestors.

        Returns what was deleted.
        """
        with self.lock.exclusive():
            layer = self.get(chain)
            if layer.refcount <= 0:
                raise LayerNotRetained(f"layer not retained: {chain}")
            self.records.release(chain, lease)
            return self.collect(chain)

    @contextlib.contextmanager
    def lease(self) -> Iterator[str]:
        """A lease for references an operation takes before it hands them to an owner.

        An import registers layers one by one before the image that will own them
        exists. References taken under a lease are recorded with it; whatever the lease
        still holds when the block ends is released, and if the process dies instead,
        the next opener of the store releases it (the lease's operation lock is free).
        """
        lease_id = f"lease-{random_id()}"
        op = OperationLock(self.tmp, lease_id)
        try:
            yield lease_id
        finally:
            try:
                self.release_lease(lease_id)
            finally:
                op.release()

    def hand_over(self, tx: sqlite3.Connection, lease: str, chain: str) -> None:
        """Within the owner's transaction `tx`: the lease's reference on `chain` now belongs to the owner."""
        self.records.hand_over(tx, lease, chain)

    def release_lease(self, lease_id: str) -> None:
        with self.lock.exclusive():
            for chain in self.records.leased(lease_id):
                self.release(chain, lease_id)

    def users(self, chain: str) -> int:
        """References, child layers and containers that keep `chain` alive."""
        return self.records.users(chain)

    def collect(self, chain: str | None) -> list[Layer]:
        """Delete `chain` and then its ancestors while nothing uses them (lock held)."""
        deleted: list[Layer] = []
        while chain is not None:
            layer = self.records.layer(chain)
            if layer is None or self.users(chain) > 0:
                break
            op = OperationLock(self.tmp, layer.cache_id)
            try:
                self.records.set_layer_state(layer.cache_id, "removing")
                fault("release:after-mark")
                self.driver.remove(layer.cache_id)
                self.records.delete_layer(layer.cache_id)
            finally:
                op.release()
            deleted.append(layer)
            chain = layer.parent
        return deleted

    def tar_size(self, chain: str) -> int:
        """The size of the layer's original tar, known from its tar-split record alone."""
        from cowstore.layers import tarsplit

        self.get(chain)
        return tarsplit.tar_size(self.records.tar_split(chain))

    def write_tar(self, chain: str, out: Writer) -> None:
        """Write the layer's original tar to `out` as it is reassembled, byte for byte.

        The bytes are hashed on the way; DigestMismatch at the end means the layer no
        longer hashes to its diff id, and what was written must be discarded.
        """
        from cowstore.layers import tars

        tars.assemble(self.driver, self.get(chain), self.records.tar_split(chain), out)

    def tar_stream(self, chain: str) -> BinaryIO:
        """The layer's original tar, byte for byte, verified against its diff id (in a private file)."""
        return fsutil.spooled(lambda out: self.write_tar(chain, out), self.tmp)

    def verify(self, chain: str) -> None:
        """Reassemble the layer's tar only to hash it: DigestMismatch (or a TarSplitError) if it changed."""
        from cowstore.layers import tars

        self.write_tar(chain, tars.Discard())

    # ---- container (read-write) layers ----------------------------------------------

    def get_rw(self, name: str) -> RWLayer:
        rw = self.records.mount(name)
        if rw is None:
            raise LayerNotFound(f"mount does not exist: {name}")
        return rw

    def rw_layers(self) -> list[RWLayer]:
        return self.records.mounts()

    def create_rw(
        self,
        name: str,
        parent: str | None,
        *,
        init: Callable[[pathlib.Path], None] | None = None,
        storage_opts: Mapping[str, str] | None = None,
        on_ready: Callable[[sqlite3.Connection], None] | None = None,
    ) -> RWLayer:
        """A container layer named `name` on top of image layer `parent` (None: empty).

        With `init`, an `-init` layer sits between them, holding what `init` writes
        (mount targets); it never shows in the container's diff or commits. `init` must
        write the same for every container of `parent`: unless the driver keeps Docker's
        layout (one `<mount id>-init` per container) or the container has storage
        options of its own, every container of `parent` shares one `<parent>-init`
        layer, made by the first and removed with the last. That is where most of a
        container's cost went: its files, and the mount needed to write them.
        `on_ready(tx)` runs in the transaction that makes the layer ready (its owner's
        record), so no crash can leave one without the other. The record turns ready once
        the driver's sync put the storage on disk; see `_marker_orders_storage` for when
        the creating record may go without an fsync.
        """
        with space_errors(f"creating container layer {name}"):
            mount_id = random_id()
            shared = init is not None and not storage_opts and not self.driver.docker_layout
            with self.lock.exclusive(), self.db.guarded():
                if self.records.mount_name_taken(name):
                    raise LayerExists(f"mount already exists with name: {name}")
                parent_cache = self.get(parent).cache_id if parent is not None else None
                init_id = None
                if init is not None:
                    init_id = initlayers.shared_id(parent_cache) if shared else f"{mount_id}-init"
                make_init = shared and init_id is not None and initlayers.needs_making(self, name, init_id)
                durable = make_init or not _marker_orders_storage(self.tmp, self.driver)
                op = OperationLock.announce(
                    self.tmp, mount_id, lambda: self.records.add_mount(name, mount_id, init_id, parent, durable=durable)
                )
                if make_init and init and init_id:
                    initlayers.make_shared(self, name, op, init_id, parent_cache, init)
            try:
                fault("create-rw:after-insert")
                if init is not None and init_id is not None and not shared:
                    self.driver.create_rw(init_id, parent_cache, storage_opts=storage_opts)
                    self.driver.fill(init_id, init)
                if init_id is not None:
                    parent_cache = init_id
                    fault("create-rw:after-init")
                self.driver.create_rw(mount_id, parent_cache, storage_opts=storage_opts)
                if self.sync:  # a container reported ready survives a power loss with its files (and -init's, if made)
                    self.driver.sync([i for i in (init_id if make_init or not shared else None, mount_id) if i])
                with self.lock.exclusive(), self.db.guarded():
                    self.records.set_mount_state(name, "ready", on_ready)
                    return self.get_rw(name)
            except BaseException:
                _undo_or_leave(op, lambda: _drop_unfinished_rw(self, name, mount_id, init_id))
                raise
            finally:
                op.release()

    def _diff_parent(self, rw: RWLayer) -> str | None:
        if rw.init_id:
            return rw.init_id
        return self.get(rw.parent).cache_id if rw.parent else None

    def mount(self, name: str) -> pathlib.Path:
        """Mount a container layer; the count lets `remove_rw` refuse a mounted container."""
        with self.lock.exclusive(), self.db.guarded():
            rw = self.get_rw(name)
            path = self.driver.get(rw.mount_id)
            self.records.count_mount(name, +1)
        return path

    def unmount(self, name: str) -> None:
        with self.lock.exclusive(), self.db.guarded():
            rw = self.get_rw(name)
            if rw.mount_count <= 0:
                raise NotMounted(f"not mounted: {name}")
            self.driver.put(rw.mount_id)
            self.records.count_mount(name, -1)

    def rw_changes(self, name: str) -> list[Change]:
        rw = self.get_rw(name)
        return self.driver.changes(rw.mount_id, self._diff_parent(rw))

    def rw_size(self, name: str) -> int:
        rw = self.get_rw(name)
        return self.driver.diff_size(rw.mount_id, self._diff_parent(rw))

    def rw_diff(self, name: str) -> BinaryIO:
        """The container's changeset as a tar (what a commit registers).

        A sparse file costs its full length in the tar and in the new layer (and in the
        spool of a driver that finds changes by comparing trees): so the changes'
        apparent size is held against the limits first, and nothing is written when they
        refuse it.
        """
        rw = self.get_rw(name)

        def check(changes: list[Change], size: int) -> None:
            _check_changes(changes, size, self.limits, self.tmp)

        return self.driver.checked_diff(rw.mount_id, self._diff_parent(rw), check)

    def rw_apply(self, name: str, stream: BinaryIO) -> int:
        """Apply a changeset tar to a container layer (Docker's RWLayer.ApplyDiff)."""
        rw = self.get_rw(name)
        return self.driver.apply_diff(rw.mount_id, self._diff_parent(rw), stream)

    def rw_metadata(self, name: str) -> dict[str, str]:
        return self.driver.metadata(self.get_rw(name).mount_id)

    def remove_rw(
        self, name: str, *, force: bool = False, on_removing: Callable[[sqlite3.Connection], None] | None = None
    ) -> list[Layer]:
        """Delete a container layer (unmounting it with `force`); returns deleted image layers.

        `on_removing(tx)` runs in the transaction that marks the layer for removal (its
        owner's record goes): from there on, a crash is finished by the next opener.
        """
        with self.lock.exclusive():
            rw = self.get_rw(name)
            if rw.mount_count > 0 and not force:
                raise LayerInUse(f"mount still active: {name} is mounted {rw.mount_count} time(s)")
            op = OperationLock(self.tmp, rw.mount_id)
            try:
                self.records.set_mount_state(name, "removing", on_removing)
                fault("remove-rw:after-mark")
                initlayers.drop_storage(self.driver, self.records, rw.name, rw.mount_id, rw.init_id)
                self.records.delete_mount(name)
            finally:
                op.release()
            return self.collect(rw.parent)

    # ---- consistency ------------------------------------------------------------------

    def check(
        self, *, repair: bool = False, verify_content: bool = False, expected_refs: Mapping[str, int] | None = None
    ) -> list[Problem]:
        """Find (and with `repair`, fix) what a crash, a bug or a hand edit left inconsistent.

        `expected_refs` maps chain ids to the references their owners (images) hold;
        when given, every layer's count is compared with it.
        """
        from cowstore.layers import consistency

        with self.lock.exclusive():
            return consistency.check(self, repair=repair, verify_content=verify_content, expected_refs=expected_refs)

    def prune(self, owners: Mapping[str, int]) -> tuple[list[Layer], list[str]]:
        """Delete layers nobody uses and driver storage no record names (see `consistency.prune`)."""
        from cowstore.layers import consistency

        with self.lock.exclusive():
            return consistency.prune(self, owners)


# Docker's names of the journaled filesystems a store lives on (extfs: ext4, and ext3).
_JOURNALED = ("extfs", "xfs", "btrfs")


def _marker_orders_storage(tmp: pathlib.Path, driver: Driver) -> bool:
    """Whether an operation marker linked in `tmp` reaches the disk no later than the driver
    storage made after it: both metadata of one journaled filesystem, which writes metadata
    to disk in the order it was made.

    What a container layer's creation (`LayerStore.create_rw`) may then leave after a
    power loss: its record (state creating) is written before the storage, and turns
    ready only after the driver's sync has put the storage on disk; that is all the sync
    is for: a ready record never names storage a power loss can take back. The creating
    record need not reach the disk before the storage: the marker (`tmp/<mount id>.op`)
    is linked before both, so storage that outlives a power loss always has its marker,
    and recovery removes what a marker names and no record does. One fsync fewer per
    container. Where this does not hold, and when the container makes its image's shared
    `-init` layer (which its marker does not name), the record is durable first.
    """
    if not driver.files_in_home or os.stat(tmp).st_dev != os.stat(driver.home).st_dev:
        return False
    return fsutil.backing_fs(tmp) in _JOURNALED


def _reserved(change: Change) -> bool:
    """A container file named `.wh.*` would become a whiteout in the committed layer (docs/semantics.md)."""
    return change.kind != "D" and change.path.rpartition("/")[2].startswith(".wh.")


def _check_changes(changes: list[Change], size: int, limits: Limits, tmp: pathlib.Path) -> None:
    """Refuse a commit the limits forbid (`size`: the changes' bytes), or one holding a file named like a whiteout."""
    if size > limits.max_bytes:
        raise ArchiveError(
            f"the changes hold {size} bytes, over the limit of {limits.max_bytes} bytes (--limit max-bytes)"
        )
    fs = os.statvfs(tmp)
    if fs.f_bavail * fs.f_frsize - size < limits.min_free_disk:
        raise StagingSpaceExhausted(
            f"not enough free space: the changes hold {size} bytes, and spooling them would leave less than "
            f"{limits.min_free_disk} "
            f"bytes free on {tmp} (--limit min-free-disk)"
        )
    reserved = [c.path for c in changes if _reserved(c)]
    if reserved:
        raise ArchiveError(
            f"{reserved[0]} is named like a whiteout (.wh.): a layer cannot store it; rename it before commit"
        )


def _undo_or_leave(op: OperationLock, undo: Callable[[], None]) -> None:
    """Undo what a failed operation made; when even that fails (a full disk), keep the
    operation's marker instead, so the next opener's recovery finishes the undoing."""
    try:
        undo()
    except (CowstoreError, OSError):
        op.leave()


def _drop_unfinished_rw(store: LayerStore, name: str, mount_id: str, init_id: str | None) -> None:
    with store.lock.exclusive():
        initlayers.drop_storage(store.driver, store.records, name, mount_id, init_id)
        store.records.delete_mount(name)
