"""The layer store: content-addressed read-only layers and container layers over a driver.

It knows chain ids, diff ids, references and crash recovery, and nothing of any
particular driver: everything on disk beyond the database goes through the Driver
interface. Every mutation is staged, verified and then published in one transaction,
with a state column that tells the next opener what a killed process left half done.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from cowstore.archive.changes import Change
from cowstore.archive.tarstream import Limits
from cowstore.digest import DigestingReader, DigestingWriter, chain_id, check_digest, random_id
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
)
from cowstore.host import fsutil
from cowstore.layers import consistency, tarsplit
from cowstore.layers.consistency import Problem
from cowstore.layers.faults import fault
from cowstore.layers.lock import OperationLock, StoreLock
from cowstore.metadata.db import Database

MAX_DEPTH = 1000  # a sanity bound; drivers enforce their own (overlay2: 500 lowers)
_COPY = 1024 * 1024

@dataclass(frozen=True)
class Layer:
    """A registered read-only layer."""

    chain_id: str
    diff_id: str
    cache_id: str
    parent: str | None
    size: int  # bytes of this layer alone (the applied size)
    depth: int
    refcount: int
    created: float


@dataclass(frozen=True)
class RWLayer:
    """A container's read-write layer and its `-init` layer."""

    name: str
    mount_id: str
    init_id: str | None
    parent: str | None
    mount_count: int
    created: float


def _layer(row: sqlite3.Row) -> Layer:
    return Layer(
        row["chain_id"], row["diff_id"], row["cache_id"], row["parent"], row["size"], row["depth"], row["refcount"], row["created"]
    )


def _rw(row: sqlite3.Row) -> RWLayer:
    return RWLayer(row["name"], row["mount_id"], row["init_id"], row["parent"], row["mount_count"], row["created"])


class LayerStore:
    """Layers of one store root (`<root>/cowstore.db`) kept by one driver."""

    def __init__(self, root: str | os.PathLike, driver: Driver, *, sync: bool = True, limits: Limits | None = None) -> None:
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
        self.db = Database(self.root / "cowstore.db", durable=sync)
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
            for row in self.db.query("SELECT * FROM mounts WHERE state != 'ready'"):
                if OperationLock.abandoned(self.tmp, row["mount_id"]):
                    self._drop_rw_storage(row["mount_id"], row["init_id"])
                    with self.db.transaction() as tx:
                        tx.execute("DELETE FROM mounts WHERE name = ?", (row["name"],))
                    done.append(f"removed unfinished container layer {row['name']}")
                    if row["parent"]:
                        self.collect(row["parent"])
            for row in self.db.query("SELECT * FROM layers WHERE state != 'ready' ORDER BY depth DESC"):
                if OperationLock.abandoned(self.tmp, row["cache_id"]):
                    self.driver.remove(row["cache_id"])
                    with self.db.transaction() as tx:
                        tx.execute("DELETE FROM layers WHERE cache_id = ?", (row["cache_id"],))
                    done.append(f"removed unfinished layer {row['cache_id']}")
                    if row["parent"]:
                        self.collect(row["parent"])
            for row in self.db.query("SELECT DISTINCT lease_id FROM leases"):
                if OperationLock.abandoned(self.tmp, row["lease_id"]):
                    self._release_lease(row["lease_id"])
                    done.append(f"released the references of interrupted operation {row['lease_id']}")
            for leftover in self.tmp.glob("spool-*"):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        return done

    # ---- read-only layers -----------------------------------------------------------

    def get(self, chain: str) -> Layer:
        rows = self.db.query("SELECT * FROM layers WHERE chain_id = ? AND state = 'ready'", (chain,))
        if not rows:
            raise LayerNotFound(f"layer does not exist: {chain}")
        return _layer(rows[0])

    def layers(self) -> list[Layer]:
        return [_layer(r) for r in self.db.query("SELECT * FROM layers WHERE state = 'ready' ORDER BY created")]

    def chain(self, chain: str) -> list[Layer]:
        """The layer and its ancestors, top first."""
        result = [self.get(chain)]
        while result[-1].parent:
            result.append(self.get(result[-1].parent))
        return result

    def total_size(self, chain: str) -> int:
        return sum(layer.size for layer in self.chain(chain))

    @contextlib.contextmanager
    def _spooled(self, stream: BinaryIO, expected_diff_id: str | None) -> Iterator[tuple[BinaryIO, str, bytes]]:
        """Copy the tar to a private file while hashing it; verify before any extraction."""
        with tempfile.TemporaryFile(dir=self.tmp, prefix="spool-") as spool:
            reader = DigestingReader(stream)
            next_check = 0
            while chunk := reader.read(_COPY):
                spool.write(chunk)
                if reader.count > self.limits.max_bytes + 64 * 1024 * 1024:
                    raise ArchiveError(f"layer larger than the limit of {self.limits.max_bytes} bytes (--limit max-bytes)")
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
                f"stopped staging a layer: less than {self.limits.min_free_disk} bytes free on {self.tmp} (--limit min-free-disk)"
            )

    def register(
        self, stream: BinaryIO, parent: str | None = None, *, expected_diff_id: str | None = None, lease: str | None = None
    ) -> Layer:
        """Store an uncompressed layer tar on top of `parent`; returns it with one more reference.

        A layer whose chain id is already stored is not extracted again. With `lease`,
        the new reference belongs to that lease until it is handed over (see `lease`).
        """
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
                op = self._announce(
                    cache_id,
                    "INSERT INTO layers (cache_id, parent, state, created) VALUES (?, ?, 'creating', ?)",
                    (cache_id, parent, time.time()),
                )
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

    def _announce(self, op_id: str, sql: str, params: tuple) -> OperationLock:
        """Take the operation lock of `op_id`, then record the operation in state `creating`.

        In that order: a record whose lock is free is what a dead process left behind.
        """
        op = OperationLock(self.tmp, op_id)
        try:
            with self.db.transaction() as tx:
                tx.execute(sql, params)
        except BaseException:
            op.release()
            raise
        return op

    def _retain_if_present(self, chain: str, lease: str | None = None) -> Layer | None:
        with self.lock.exclusive():
            rows = self.db.query("SELECT * FROM layers WHERE chain_id = ? AND state = 'ready'", (chain,))
            if not rows:
                return None
            with self.db.transaction() as tx:
                tx.execute("UPDATE layers SET refcount = refcount + 1 WHERE chain_id = ?", (chain,))
                if lease is not None:
                    tx.execute("INSERT INTO leases (lease_id, chain_id) VALUES (?, ?)", (lease, chain))
            return self.get(chain)

    def _publish(
        self, cache_id: str, chain: str, diff_id: str, parent: Layer | None, size: int, split: bytes, lease: str | None
    ) -> Layer:
        with self.lock.exclusive():
            existing = self._retain_if_present(chain, lease)
            if existing is not None:  # a concurrent import of the same layer won
                self._abandon_layer(cache_id)
                return existing
            with self.db.transaction() as tx:
                tx.execute(
                    "UPDATE layers SET chain_id = ?, diff_id = ?, size = ?, depth = ?, refcount = 1, tar_split = ?, "
                    "state = 'ready' WHERE cache_id = ?",
                    (chain, diff_id, size, (parent.depth + 1) if parent else 1, split, cache_id),
                )
                if lease is not None:
                    tx.execute("INSERT INTO leases (lease_id, chain_id) VALUES (?, ?)", (lease, chain))
            return self.get(chain)

    def _abandon_layer(self, cache_id: str) -> None:
        with self.lock.exclusive():
            with self.db.transaction() as tx:
                tx.execute("UPDATE layers SET state = 'removing' WHERE cache_id = ?", (cache_id,))
            self.driver.remove(cache_id)
            with self.db.transaction() as tx:
                tx.execute("DELETE FROM layers WHERE cache_id = ?", (cache_id,))

    def release(self, chain: str, lease: str | None = None) -> list[Layer]:
        """Drop one reference (of `lease`, if given); delete the layer and unused ancestors.

        Returns what was deleted.
        """
        with self.lock.exclusive():
            layer = self.get(chain)
            if layer.refcount <= 0:
                raise LayerNotRetained(f"layer not retained: {chain}")
            with self.db.transaction() as tx:
                tx.execute("UPDATE layers SET refcount = refcount - 1 WHERE chain_id = ?", (chain,))
                if lease is not None:
                    self.hand_over(tx, lease, chain)
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
        tx.execute(
            "DELETE FROM leases WHERE rowid = (SELECT rowid FROM leases WHERE lease_id = ? AND chain_id = ? LIMIT 1)",
            (lease, chain),
        )

    def _release_lease(self, lease_id: str) -> None:
        with self.lock.exclusive():
            for row in self.db.query("SELECT chain_id FROM leases WHERE lease_id = ?", (lease_id,)):
                self.release(row["chain_id"], lease_id)

    def users(self, chain: str) -> int:
        """References, child layers and containers that keep `chain` alive."""
        row = self.db.query(
            "SELECT (SELECT refcount FROM layers WHERE chain_id = :c)"
            " + (SELECT COUNT(*) FROM layers WHERE parent = :c)"
            " + (SELECT COUNT(*) FROM mounts WHERE parent = :c) AS users",
            {"c": chain},  # type: ignore[arg-type]
        )
        return row[0]["users"] or 0

    def collect(self, chain: str | None) -> list[Layer]:
        """Delete `chain` and then its ancestors while nothing uses them (lock held)."""
        deleted: list[Layer] = []
        while chain is not None:
            rows = self.db.query("SELECT * FROM layers WHERE chain_id = ? AND state = 'ready'", (chain,))
            if not rows or self.users(chain) > 0:
                break
            layer = _layer(rows[0])
            with self.db.transaction() as tx:
                tx.execute("UPDATE layers SET state = 'removing' WHERE cache_id = ?", (layer.cache_id,))
            fault("release:after-mark")
            self.driver.remove(layer.cache_id)
            with self.db.transaction() as tx:
                tx.execute("DELETE FROM layers WHERE cache_id = ?", (layer.cache_id,))
            deleted.append(layer)
            chain = layer.parent
        return deleted

    def tar_stream(self, chain: str) -> BinaryIO:
        """The layer's original tar, byte for byte, verified against its diff id."""
        layer = self.get(chain)
        split = self.db.query("SELECT tar_split FROM layers WHERE chain_id = ?", (chain,))[0]["tar_split"]
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
        return out  # type: ignore[return-value]

    # ---- container (read-write) layers ----------------------------------------------

    def get_rw(self, name: str) -> RWLayer:
        rows = self.db.query("SELECT * FROM mounts WHERE name = ? AND state = 'ready'", (name,))
        if not rows:
            raise LayerNotFound(f"mount does not exist: {name}")
        return _rw(rows[0])

    def rw_layers(self) -> list[RWLayer]:
        return [_rw(r) for r in self.db.query("SELECT * FROM mounts WHERE state = 'ready' ORDER BY created")]

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
        mount_id = random_id()
        init_id = f"{mount_id}-init" if init is not None else None
        with self.lock.exclusive():
            if self.db.query("SELECT 1 FROM mounts WHERE name = ?", (name,)):
                raise LayerExists(f"mount already exists with name: {name}")
            parent_layer = self.get(parent) if parent is not None else None
            op = self._announce(
                mount_id,
                "INSERT INTO mounts (name, mount_id, init_id, parent, state, created) VALUES (?, ?, ?, ?, 'creating', ?)",
                (name, mount_id, init_id, parent, time.time()),
            )
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
            with self.lock.exclusive(), self.db.transaction() as tx:
                tx.execute("UPDATE mounts SET state = 'ready' WHERE name = ?", (name,))
            return self.get_rw(name)
        except BaseException:
            with self.lock.exclusive():
                self._drop_rw_storage(mount_id, init_id)
                with self.db.transaction() as tx:
                    tx.execute("DELETE FROM mounts WHERE name = ?", (name,))
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
            with self.db.transaction() as tx:
                tx.execute("UPDATE mounts SET mount_count = mount_count + 1 WHERE name = ?", (name,))
        return path

    def unmount(self, name: str) -> None:
        with self.lock.exclusive():
            rw = self.get_rw(name)
            if rw.mount_count <= 0:
                raise NotMounted(f"not mounted: {name}")
            self.driver.put(rw.mount_id)
            with self.db.transaction() as tx:
                tx.execute("UPDATE mounts SET mount_count = mount_count - 1 WHERE name = ?", (name,))

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
            with self.db.transaction() as tx:
                tx.execute("UPDATE mounts SET state = 'removing' WHERE name = ?", (name,))
            fault("remove-rw:after-mark")
            self._drop_rw_storage(rw.mount_id, rw.init_id)
            with self.db.transaction() as tx:
                tx.execute("DELETE FROM mounts WHERE name = ?", (name,))
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
