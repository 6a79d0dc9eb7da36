"""The rows of snapshot layers: the `snapshots` table, and every SQL statement on it.

A snapshot is a driver layer written through a mount (containerd's model) rather than
from a tar: it has a namespace and a key (the name, once committed), a kind, labels,
nanosecond timestamps and, once measured, its usage. Rows move through the same states
as layers and mounts (creating, ready, removing), so recovery and `check` read them the
same way. Only ready rows are visible to lookups; a key stays taken in every state, so a
half-built snapshot can never be shadowed by a second one of the same name.
"""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING, NamedTuple

from cowstore.metadata.db import Database

if TYPE_CHECKING:  # a Literal at run time costs every command its construction
    from typing import Literal

    Kind = Literal["view", "active", "committed"]
    State = Literal["creating", "ready", "removing"]

_SELECT = "SELECT s.*, p.key AS parent_key FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent"


class Snapshot(NamedTuple):
    """One snapshot layer; `key` is the name of a committed one."""

    id: str  # the driver's layer id
    namespace: str
    key: str
    parent: str | None  # the parent's id
    parent_key: str | None
    kind: Kind
    created_ns: int
    updated_ns: int
    labels: dict[str, str]
    size: int | None = None
    inodes: int | None = None
    state: State = "ready"


def _snapshot(row: sqlite3.Row) -> Snapshot:
    return Snapshot(
        row["id"],
        row["namespace"],
        row["key"],
        row["parent"],
        row["parent_key"],
        row["kind"],
        row["created_ns"],
        row["updated_ns"],
        json.loads(row["labels"]),
        row["size"],
        row["inodes"],
        row["state"],
    )


def _where_key(namespace: str | None) -> tuple[str, tuple[str, ...]]:
    """A key lookup in one namespace, or in all of them when `namespace` is None."""
    if namespace is None:
        return "s.key = ?", ()
    return "s.key = ? AND s.namespace = ?", (namespace,)


class SnapshotRecords:
    """The snapshots table of one store database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def find(self, namespace: str | None, key: str) -> list[Snapshot]:
        """Ready snapshots called `key` (several only when looking in every namespace)."""
        where, extra = _where_key(namespace)
        rows = self.db.query(f"{_SELECT} WHERE {where} AND s.state = 'ready' ORDER BY s.namespace", (key, *extra))
        return [_snapshot(r) for r in rows]

    def taken(self, namespace: str | None, key: str) -> bool:
        """Whether a snapshot of any state holds `key` (in `namespace`, or in any)."""
        where, extra = _where_key(namespace)
        return bool(self.db.query(f"SELECT 1 FROM snapshots s WHERE {where}", (key, *extra)))

    def by_id(self, id: str) -> Snapshot | None:
        rows = self.db.query(f"{_SELECT} WHERE s.id = ?", (id,))
        return _snapshot(rows[0]) if rows else None

    def snapshots(self, namespace: str | None = None) -> list[Snapshot]:
        """Ready snapshots of `namespace` (all namespaces for None), oldest first."""
        if namespace is None:
            rows = self.db.query(f"{_SELECT} WHERE s.state = 'ready' ORDER BY s.created_ns")
        else:
            rows = self.db.query(
                f"{_SELECT} WHERE s.state = 'ready' AND s.namespace = ? ORDER BY s.created_ns", (namespace,)
            )
        return [_snapshot(r) for r in rows]

    def unfinished(self) -> list[Snapshot]:
        """Rows left creating or removing, newest (so children) first."""
        rows = self.db.query(f"{_SELECT} WHERE s.state != 'ready' ORDER BY s.created_ns DESC")
        return [_snapshot(r) for r in rows]

    def children(self, id: str) -> int:
        return int(self.db.query("SELECT COUNT(*) AS n FROM snapshots WHERE parent = ?", (id,))[0]["n"])

    def ids(self) -> set[str]:
        """Every driver id a snapshot row names, in any state."""
        return {r["id"] for r in self.db.query("SELECT id FROM snapshots")}

    def add(
        self, id: str, namespace: str, key: str, parent: str | None, kind: Kind, labels: dict[str, str], now: int
    ) -> None:
        """Record a snapshot being created (state creating)."""
        self.db.write(
            "INSERT INTO snapshots (id, namespace, key, parent, kind, state, labels, created_ns, updated_ns) "
            "VALUES (?, ?, ?, ?, ?, 'creating', ?, ?, ?)",
            (id, namespace, key, parent, kind, json.dumps(labels), now, now),
        )

    def set_state(self, id: str, state: State) -> None:
        self.db.write("UPDATE snapshots SET state = ? WHERE id = ?", (state, id))

    def commit(self, id: str, name: str, labels: dict[str, str], now: int) -> None:
        """An active snapshot becomes committed under `name`: a new record as far as times go."""
        self.db.write(
            "UPDATE snapshots SET kind = 'committed', key = ?, labels = ?, created_ns = ?, updated_ns = ?, "
            "size = NULL, inodes = NULL WHERE id = ?",
            (name, json.dumps(labels), now, now, id),
        )

    def set_labels(self, id: str, labels: dict[str, str], now: int) -> None:
        self.db.write("UPDATE snapshots SET labels = ?, updated_ns = ? WHERE id = ?", (json.dumps(labels), now, id))

    def set_usage(self, id: str, size: int, inodes: int) -> None:
        self.db.write("UPDATE snapshots SET size = ?, inodes = ? WHERE id = ?", (size, inodes, id))

    def delete(self, id: str) -> None:
        self.db.write("DELETE FROM snapshots WHERE id = ?", (id,))
