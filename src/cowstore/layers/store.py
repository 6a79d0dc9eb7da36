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
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import BinaryIO

from cowstore.archive.changes import Change
from cowstore.archive.tarstream import Limits
from cowstore.digest import DigestingReader, DigestingWriter, Reader, chain_id, check_digest, random_id
from cowstore.drivers.driver import Driver
from cowstore.errors import (
    ArchiveError,
    DigestMismatch,
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
from cowstore.layers import consistency, tarsplit
from cowstore.layers.consistency import Problem
from cowstore.layers.faults import fault
from cowstore.layers.lock import OperationLock, StoreLock
from cowstore.layers.records import Layer, LayerRecords, RWLayer
from cowstore.metadata.db import DATABASE_FILE, Database

MAX_DEPTH = 1000  # a sanity bound; drivers enforce their own (overlay2: 500 lowers)
_COPY = 1024 * 1024


class LayerStore:
    """Layers of one store root (`<root>/cowstore.db`) kept by one driver."""

    def __init__(
        self, root: str | os.PathLike, driver: Driver, *, sync: bool = True, limits: Limits | None = None
    ) -> None:
        self.root = pathlib.Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Layers hold setuid binaries and device nodes: no other user may reach them.
        os.chmod(self.root, 0o700)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(mode=0o700, exist_ok=True)
        self.driver = driver
        self.sync = sync
        fsutil.raise_fd_limit()
        self.limits = limits or Limits()
        self.lock = StoreLock(self.root / "store.lock")
        self.db = Database(self.root / DATABASE_FILE, durable=sync)
        self.records = LayerRecords(self.db)
        with self.lock.exclusive():
            self.db.migrate()
            self.recover()

    def close(self) -> None:
        self.db.close()
        self.lock.close()

    # ---- crash recovery -------------------------------------------------------------

    def recover(self) -> list[str]:
        """Finish what killed processes left in state creating/removing; return what was done."""
        done: list[str] = []
        with self.lock.exclusive():
            for rw in self.records.unfinished_mounts():
                if OperationLock.abandoned(self.tmp, rw.mount_id):
                    self._drop_rw_storage(rw.mount_id, rw.init_id)
                    self.records.delete_mount(rw.name)
                    done.append(f"removed unfinished container layer {rw.name}")
                    if rw.parent:
                        self.collect(rw.parent)
            for unfinished in self.records.unfinished_layers():
                if OperationLock.abandoned(self.tmp, unfinished.cache_id):
                    self.driver.remove(unfinished.cache_id)
                    self.records.delete_layer(unfinished.cache_id)
                    done.append(f"removed unfinished layer {unfinished.cache_id}")
                    if unfinished.parent:
                        self.collect(unfinished.parent)
            for lease_id in self.records.lease_ids():
                if OperationLock.abandoned(self.tmp, lease_id):
                    self._release_lease(lease_id)
                    done.append(f"released the references of interrupted operation {lease_id}")
            for leftover in self.tmp.glob("spool-*"):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        return done

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

    @contextlib.contextmanager
    def _spooled(self, stream: Reader, expected_diff_id: str | None) -> Iterator[tuple[BinaryIO, str, bytes]]:
        """Copy the tar to a private file while hashing it; verify before any extraction."""
        with tempfile.TemporaryFile(dir=self.tmp, prefix="spool-") as spool:
            reader = DigestingReader(stream)
            next_check = 0
            while chunk := reader.read(_COPY):
                spool.write(chunk)
                if reader.count > self.limits.max_bytes + 64 * 1024 * 1024:
                    raise ArchiveError(
                        f"layer larger than the limit of {self.limits.max_bytes} bytes (--limit max-bytes)"
                    )
                if reader.count >= next_check:
                    self._check_free_disk()
                    next_check = reader.count + 64 * _COPY
            if expected_diff_id is not None:
                reader.verify(expected_diff_id, "layer")
            spool.seek(0)
            split = tarsplit.disassemble(spool, self.limits)
            spool.seek(0)
            yield spool, reader.digest, split

    def _check_free_disk(self) -> None:
        fs = os.statvfs(self.tmp)
        if fs.f_bavail * fs.f_frsize < self.limits.min_free_disk:
            raise StagingSpaceExhausted(
                f"stopped staging a layer: less than {self.limits.min_free_disk} bytes free on {self.tmp} "
                "(--limit min-free-disk)"
            )

    def register(
        self,
        stream: Reader,
        parent: str | None = None,
        *,
        expected_diff_id: str | None = None,
        lease: str | None = None,
    ) -> Layer:
        """Store an uncompressed layer tar on top of `parent`; returns it with one more reference.

        A layer whose chain id is already stored is not extracted again. With `lease`,
        the new reference belongs to that lease until it is handed over (see `lease`).
        A full disk leaves nothing behind and fails as NoSpace.
        """
        with space_errors("storing a layer"):
            return self._register(stream, parent, expected_diff_id, lease)

    def _register(self, stream: Reader, parent: str | None, expected_diff_id: str | None, lease: str | None) -> Layer:
        if expected_diff_id is not None:
            check_digest(expected_diff_id)
        parent_layer = self.get(parent) if parent is not None else None
        if parent_layer is not None and parent_layer.depth >= MAX_DEPTH:
            raise MaxDepthExceeded()
        with self._spooled(stream, expected_diff_id) as (spool, diff_id, split):
            chain = chain_id(parent, diff_id)
            existing = self._retain_if_present(chain, lease)
            if existing is not None:
                return existing
            cache_id = random_id()
            with self.lock.exclusive():
                parent_layer = self.get(parent) if parent is not None else None
                op = self._announce(cache_id, lambda: self.records.add_layer(cache_id, parent))
            try:
                fault("register:after-insert")
                parent_cache = parent_layer.cache_id if parent_layer else None
                self.driver.create(cache_id, parent_cache)
                size = self.driver.apply_diff(cache_id, parent_cache, spool)
                if self.sync:
                    fsutil.syncfs(self.driver.home)
                fault("register:after-apply")
                return self._publish(cache_id, chain, diff_id, parent_layer, size, split, lease)
            except BaseException:
                self._abandon_layer(cache_id)
                raise
            finally:
                op.release()

    def _announce(self, op_id: str, record: Callable[[], None]) -> OperationLock:
        """Take the operation lock of `op_id`, then `record` the operation in state `creating`.

        In that order: a record whose lock is free is what a dead process left behind.
        """
        op = OperationLock(self.tmp, op_id)
        try:
            record()
        except BaseException:
            op.release()
            raise
        return op

    def _retain_if_present(self, chain: str, lease: str | None = None) -> Layer | None:
        with self.lock.exclusive():
            if self.records.layer(chain) is None:
                return None
            self.records.retain(chain, lease)
            return self.get(chain)

    def _publish(
        self, cache_id: str, chain: str, diff_id: str, parent: Layer | None, size: int, split: bytes, lease: str | None
    ) -> Layer:
        with self.lock.exclusive():
            existing = self._retain_if_present(chain, lease)
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
                self._release_lease(lease_id)
            finally:
                op.release()

    def hand_over(self, tx: sqlite3.Connection, lease: str, chain: str) -> None:
        """Within the owner's transaction `tx`: the lease's reference on `chain` now belongs to the owner."""
        self.records.hand_over(tx, lease, chain)

    def _release_lease(self, lease_id: str) -> None:
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
            self.records.set_layer_state(layer.cache_id, "removing")
            fault("release:after-mark")
            self.driver.remove(layer.cache_id)
            self.records.delete_layer(layer.cache_id)
            deleted.append(layer)
            chain = layer.parent
        return deleted

    def tar_stream(self, chain: str) -> BinaryIO:
        """The layer's original tar, byte for byte, verified against its diff id."""
        layer = self.get(chain)
        split = self.records.tar_split(chain)
        out = tempfile.TemporaryFile(dir=self.tmp, prefix="spool-")
        try:
            root = self.driver.get(layer.cache_id)
            try:
                digester = DigestingWriter(out)
                tarsplit.assemble(split, root, digester.write)
            finally:
                self.driver.put(layer.cache_id)
        except BaseException:
            out.close()
            raise
        if digester.digest != layer.diff_id:
            out.close()
            raise DigestMismatch(
                f"could not verify layer data for: {layer.diff_id}. This may be because internal files in the "
                "layer store were modified. Re-pull or re-import the image to fix it."
            )
        out.seek(0)
        return out

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
    ) -> RWLayer:
        """A container layer named `name` on top of image layer `parent` (None: empty).

        With `init`, an `<id>-init` layer sits between them, holding what `init`
        writes (mount targets); it never shows in the container's diff or commits.
        """
        with space_errors(f"creating container layer {name}"):
            return self._create_rw(name, parent, init, storage_opts)

    def _create_rw(
        self,
        name: str,
        parent: str | None,
        init: Callable[[pathlib.Path], None] | None,
        storage_opts: Mapping[str, str] | None,
    ) -> RWLayer:
        mount_id = random_id()
        init_id = f"{mount_id}-init" if init is not None else None
        with self.lock.exclusive():
            if self.records.mount_name_taken(name):
                raise LayerExists(f"mount already exists with name: {name}")
            parent_layer = self.get(parent) if parent is not None else None
            op = self._announce(mount_id, lambda: self.records.add_mount(name, mount_id, init_id, parent))
        try:
            fault("create-rw:after-insert")
            parent_cache = parent_layer.cache_id if parent_layer else None
            if init is not None and init_id is not None:
                self.driver.create_rw(init_id, parent_cache, storage_opts=storage_opts)
                path = self.driver.get(init_id)
                try:
                    init(path)
                finally:
                    self.driver.put(init_id)
                parent_cache = init_id
                fault("create-rw:after-init")
            self.driver.create_rw(mount_id, parent_cache, storage_opts=storage_opts)
            if self.sync:  # a container reported ready survives a power loss with its driver files
                fsutil.syncfs(self.driver.home)
            with self.lock.exclusive():
                self.records.set_mount_state(name, "ready")
            return self.get_rw(name)
        except BaseException:
            with self.lock.exclusive():
                self._drop_rw_storage(mount_id, init_id)
                self.records.delete_mount(name)
            raise
        finally:
            op.release()

    def _drop_rw_storage(self, mount_id: str, init_id: str | None) -> None:
        self.driver.remove(mount_id)
        if init_id:
            self.driver.remove(init_id)

    def _diff_parent(self, rw: RWLayer) -> str | None:
        if rw.init_id:
            return rw.init_id
        return self.get(rw.parent).cache_id if rw.parent else None

    def mount(self, name: str) -> pathlib.Path:
        """Mount a container layer; the count lets `remove_rw` refuse a mounted container."""
        with self.lock.exclusive():
            rw = self.get_rw(name)
            path = self.driver.get(rw.mount_id)
            self.records.count_mount(name, +1)
        return path

    def unmount(self, name: str) -> None:
        with self.lock.exclusive():
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
        """The container's changeset as a tar (what a commit registers)."""
        rw = self.get_rw(name)
        return self.driver.diff(rw.mount_id, self._diff_parent(rw))

    def rw_metadata(self, name: str) -> dict[str, str]:
        return self.driver.metadata(self.get_rw(name).mount_id)

    def remove_rw(self, name: str, *, force: bool = False) -> list[Layer]:
        """Delete a container layer (unmounting it with `force`); returns deleted image layers."""
        with self.lock.exclusive():
            rw = self.get_rw(name)
            if rw.mount_count > 0 and not force:
                raise LayerInUse(f"mount still active: {name} is mounted {rw.mount_count} time(s)")
            self.records.set_mount_state(name, "removing")
            fault("remove-rw:after-mark")
            self._drop_rw_storage(rw.mount_id, rw.init_id)
            self.records.delete_mount(name)
            return self.collect(rw.parent)

    # ---- consistency ------------------------------------------------------------------

    def check(
        self, *, repair: bool = False, verify_content: bool = False, expected_refs: Mapping[str, int] | None = None
    ) -> list[Problem]:
        """Find (and with `repair`, fix) what a crash, a bug or a hand edit left inconsistent.

        `expected_refs` maps chain ids to the references their owners (images) hold;
        when given, every layer's count is compared with it.
        """
        with self.lock.exclusive():
            return consistency.check(self, repair=repair, verify_content=verify_content, expected_refs=expected_refs)

    def prune(self, owners: Mapping[str, int]) -> tuple[list[Layer], list[str]]:
        """Delete layers nobody uses and driver storage no record names (see `consistency.prune`)."""
        with self.lock.exclusive():
            return consistency.prune(self, owners)
