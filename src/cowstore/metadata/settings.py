"""Settings of a store root: facts fixed when the root was first used (its driver).

A setting is written once and never changed: the first value recorded stays, since
everything stored since depends on it. It can also be read without opening the store,
because choosing the driver comes before opening anything else.
"""

from __future__ import annotations

import pathlib
import sqlite3

from cowstore.metadata.db import DATABASE_FILE, Database, open_read_only
from cowstore.metadata.reserve import Reserve


def record(db: Database, key: str, value: str) -> None:
    """Set `key` in the open database `db` unless it already has a value (which is kept)."""
    db.write("INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)", (key, value))


def recorded(root: pathlib.Path, key: str) -> str | None:
    """The value of `key` in the database of the store at `root`, looked up read-only."""
    path = root / DATABASE_FILE
    if not path.exists():
        return None
    reserve = Reserve(root)
    reserve.guard()
    try:
        return _lookup(path, key)
    except sqlite3.OperationalError as exc:
        if not reserve.disk_full(exc):
            return None  # a store from before the settings table
        if not reserve.release():  # a full disk: even a reader needs room for the WAL index
            raise reserve.error(exc) from exc
    return _lookup(path, key)


def _lookup(path: pathlib.Path, key: str) -> str | None:
    conn = open_read_only(path)
    try:
        try:
            row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
    finally:
        conn.close()
    return row[0] if row else None
