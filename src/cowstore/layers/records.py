"""The rows of the layer store: layers, mounts (container layers) and leases.

Every SQL statement on these three tables is here, so that the layer store and its
consistency checks share one meaning of a state, a reference count or a lease. The
tables themselves are created by the migrations in metadata/db.py. Each write runs in
a transaction of its own, except `hand_over`, which joins the transaction of the owner
that takes a lease's reference over (an image being recorded), so that the reference
is never held by both or by neither.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from cowstore.metadata.db import Database

if TYPE_CHECKING:  # a Literal at run time costs every command its construction
    from typing import Literal

    State = Literal["creating", "ready", "removing"]


class Layer(NamedTuple):
    """A registered read-only layer."""

    chain_id: str
    diff_id: str
    cache_id: str
    parent: str | None
    size: int  # bytes of this layer alone (the applied size)
    depth: int
    refcount: int
    created: float


class RWLayer(NamedTuple):
    """A container's read-write layer and its `-init` layer."""

    name: str
    mount_id: str
    init_id: str | None
    parent: str | None
    mount_count: int
    created: float


class UnfinishedLayer(NamedTuple):
    """A layer row left in state creating or removing: it has no chain id yet, or no longer matters."""

    cache_id: str
    parent: str | None


def _layer(row: sqlite3.Row) -> Layer:
    return Layer(
        row["chain_id"],
        row["diff_id"],
        row["cache_id"],
        row["parent"],
        row["size"],
        row["depth"],
        row["refcount"],
        row["created"],
    )


def _rw(row: sqlite3.Row) -> RWLayer:
    return RWLayer(row["name"], row["mount_id"], row["init_id"], row["parent"], row["mount_count"], row["created"])


class LayerRecords:
    """The layers, mounts and leases tables of one store database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # ---- layers ---------------------------------------------------------------------

    def layer(self, chain: str) -> Layer | None:
        rows = self.db.query("SELECT * FROM layers WHERE chain_id = ? AND state = 'ready'", (chain,))
        return _layer(rows[0]) if rows else None

    def layers(self) -> list[Layer]:
        return [_layer(r) for r in self.db.query("SELECT * FROM layers WHERE state = 'ready' ORDER BY created")]

    def unfinished_layers(self) -> list[UnfinishedLayer]:
        """Children first, so that removing one can let its parent go too."""
        rows = self.db.query("SELECT cache_id, parent FROM layers WHERE state != 'ready' ORDER BY depth DESC")
        return [UnfinishedLayer(r["cache_id"], r["parent"]) for r in rows]

    def tar_split(self, chain: str) -> bytes:
        return self.db.query("SELECT tar_split FROM layers WHERE chain_id = ?", (chain,))[0]["tar_split"]

    def users(self, chain: str) -> int:
        """References, child layers and container layers that keep `chain` alive."""
        row = self.db.query(
            "SELECT (SELECT refcount FROM layers WHERE chain_id = :c)"
            " + (SELECT COUNT(*) FROM layers WHERE parent = :c)"
            " + (SELECT COUNT(*) FROM mounts WHERE parent = :c) AS users",
            {"c": chain},
        )
        return row[0]["users"] or 0

    def add_layer(self, cache_id: str, parent: str | None, depth: int = 1) -> None:
        """Record a layer being created: durably, before its storage exists, so that after a
        power loss no storage is left that no record names.

        A layer registered in a batch above a layer of the same batch has no published
        parent to name yet: it is recorded with none and its `depth`, so that recovery
        still removes children before their parents, and gets its parent at `publish`.
        """
        self.db.write(
            "INSERT INTO layers (cache_id, parent, depth, state, created) VALUES (?, ?, ?, 'creating', ?)",
            (cache_id, parent, depth, time.time()),
        )

    def publish(
        self,
        cache_id: str,
        chain: str,
        diff_id: str,
        size: int,
        depth: int,
        split: bytes,
        lease: str | None,
        parent: str | None = None,
    ) -> None:
        """Make a created layer ready with its first reference (recorded with `lease`, if given).

        `parent`, when given, is recorded now (a batch layer, added without one).
        """
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE layers SET chain_id = ?, diff_id = ?, size = ?, depth = ?, refcount = 1, tar_split = ?, "
                "parent = coalesce(?, parent), state = 'ready' WHERE cache_id = ?",
                (chain, diff_id, size, depth, split, parent, cache_id),
            )
            if lease is not None:
                self._lease(tx, lease, chain)

    def retain(self, chain: str, lease: str | None) -> None:
        """One more reference on `chain` (recorded with `lease`, if given)."""
        with self.db.transaction() as tx:
            tx.execute("UPDATE layers SET refcount = refcount + 1 WHERE chain_id = ?", (chain,))
            if lease is not None:
                self._lease(tx, lease, chain)

    def release(self, chain: str, lease: str | None) -> None:
        """One reference less on `chain` (taken from `lease`, if given)."""
        with self.db.transaction() as tx:
            tx.execute("UPDATE layers SET refcount = refcount - 1 WHERE chain_id = ?", (chain,))
            if lease is not None:
                self.hand_over(tx, lease, chain)

    def set_refcount(self, chain: str, refcount: int) -> None:
        self.db.write("UPDATE layers SET refcount = ? WHERE chain_id = ?", (refcount, chain))

    def set_layer_state(self, cache_id: str, state: State) -> None:
        self.db.write("UPDATE layers SET state = ? WHERE cache_id = ?", (state, cache_id))

    def delete_layer(self, cache_id: str) -> None:
        self.db.write("DELETE FROM layers WHERE cache_id = ?", (cache_id,))

    # ---- mounts (container layers) ----------------------------------------------------

    def mount(self, name: str) -> RWLayer | None:
        rows = self.db.query("SELECT * FROM mounts WHERE name = ? AND state = 'ready'", (name,))
        return _rw(rows[0]) if rows else None

    def mounts(self) -> list[RWLayer]:
        return [_rw(r) for r in self.db.query("SELECT * FROM mounts WHERE state = 'ready' ORDER BY created")]

    def unfinished_mounts(self) -> list[RWLayer]:
        return [_rw(r) for r in self.db.query("SELECT * FROM mounts WHERE state != 'ready'")]

    def mount_name_taken(self, name: str) -> bool:
        """Whether a container layer of any state has this name."""
        return bool(self.db.query("SELECT 1 FROM mounts WHERE name = ?", (name,)))

    def add_mount(
        self, name: str, mount_id: str, init_id: str | None, parent: str | None, *, durable: bool = True
    ) -> None:
        """Record a container layer being created, before its storage exists.

        `durable=False` when a power loss may take the row back: the layer store then
        relies on the operation's marker to find storage that no record names (see
        `LayerStore.create_rw`).
        """
        self.db.write(
            "INSERT INTO mounts (name, mount_id, init_id, parent, state, created) VALUES (?, ?, ?, ?, 'creating', ?)",
            (name, mount_id, init_id, parent, time.time()),
            durable=durable,
        )

    def set_mount_state(
        self, name: str, state: State, also: Callable[[sqlite3.Connection], None] | None = None
    ) -> None:
        """Set the state; `also(tx)` runs in the same transaction (the owner's record of the layer)."""
        with self.db.transaction() as tx:
            tx.execute("UPDATE mounts SET state = ? WHERE name = ?", (state, name))
            if also is not None:
                also(tx)

    def init_used(self, init_id: str, *, other_than: str, state: State | None = None) -> bool:
        """Whether a container layer other than `other_than` (in `state`, if given) sits on `init_id`."""
        rows = self.db.query(
            "SELECT 1 FROM mounts WHERE init_id = ? AND name != ? AND state = coalesce(?, state) LIMIT 1",
            (init_id, other_than, state),
        )
        return bool(rows)

    def unready_init_users(self, init_id: str, *, other_than: str) -> list[str]:
        """Mount ids of the container layers being created or removed on `init_id`, but `other_than`."""
        rows = self.db.query(
            "SELECT mount_id FROM mounts WHERE init_id = ? AND name != ? AND state != 'ready'", (init_id, other_than)
        )
        return [r["mount_id"] for r in rows]

    def count_mount(self, name: str, change: int) -> None:
        """Add `change` (+1 or -1) to the times the container layer is mounted.

        Not durably: after a power loss no mount is left for the count to describe,
        and a count that disagrees with the mounts is corrected by the driver anyway.
        """
        self.db.write("UPDATE mounts SET mount_count = mount_count + ? WHERE name = ?", (change, name), durable=False)

    def reset_mount_count(self, name: str) -> None:
        """The container layer is mounted no more (its dead mount was cleared)."""
        self.db.write("UPDATE mounts SET mount_count = 0 WHERE name = ?", (name,))

    def delete_mount(self, name: str) -> None:
        self.db.write("DELETE FROM mounts WHERE name = ?", (name,))

    # ---- leases -----------------------------------------------------------------------

    def lease_ids(self) -> list[str]:
        return [r["lease_id"] for r in self.db.query("SELECT DISTINCT lease_id FROM leases")]

    def leased(self, lease: str) -> list[str]:
        """The chain ids `lease` holds a reference on, once per reference."""
        return [r["chain_id"] for r in self.db.query("SELECT chain_id FROM leases WHERE lease_id = ?", (lease,))]

    def lease_counts(self) -> dict[str, int]:
        """References that leases hold, by chain id."""
        rows = self.db.query("SELECT chain_id, COUNT(*) AS n FROM leases GROUP BY chain_id")
        return {r["chain_id"]: r["n"] for r in rows}

    def hand_over(self, tx: sqlite3.Connection, lease: str, chain: str) -> None:
        """Within the transaction `tx`: one reference of `lease` on `chain` is no longer the lease's."""
        tx.execute(
            "DELETE FROM leases WHERE rowid = (SELECT rowid FROM leases WHERE lease_id = ? AND chain_id = ? LIMIT 1)",
            (lease, chain),
        )

    def _lease(self, tx: sqlite3.Connection, lease: str, chain: str) -> None:
        tx.execute("INSERT INTO leases (lease_id, chain_id) VALUES (?, ?)", (lease, chain))

    # ---- across the tables ------------------------------------------------------------

    def unfinished_operation_ids(self) -> list[str]:
        """Ids of the operations that may have been interrupted: their operation lock tells."""
        rows = self.db.query(
            "SELECT cache_id AS id FROM layers WHERE state != 'ready' UNION ALL "
            "SELECT mount_id FROM mounts WHERE state != 'ready' UNION SELECT lease_id FROM leases"
        )
        return [r["id"] for r in rows]

    def storage_ids(self) -> set[str]:
        """Every driver id that a layer or container layer row names, in any state."""
        known = {r["cache_id"] for r in self.db.query("SELECT cache_id FROM layers")}
        for row in self.db.query("SELECT mount_id, init_id FROM mounts"):
            known.add(row["mount_id"])
            if row["init_id"]:
                known.add(row["init_id"])
        return known
