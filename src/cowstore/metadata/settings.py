"""Settings of a store root: facts fixed when the root was first used (its driver).

A setting is written once and never changed: the first value recorded stays, since
everything stored since depends on it. It can also be read without opening the store,
because choosing the driver comes before opening anything else.
"""

from __future__ import annotations

import pathlib
import sqlite3

from cowstore.metadata.db import DATABASE_FILE, Database, open_read_only


def record(db: Database, key: str, value: str) -> None:
    """Set `key` in the open database `db` unless it already has a value (which is kept)."""
    db.write("INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)", (key, value))


def recorded(root: pathlib.Path, key: str) -> str | None:
    """The value of `key` in the database of the store at `root`, looked up read-only."""
    path = root / DATABASE_FILE
    if not path.exists():
        return None
    conn = open_read_only(path)
    try:
        row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    except sqlite3.OperationalError:  # a store from before the settings table
        return None
    finally:
        conn.close()
    return row[0] if row else None
