"""The store's SQLite database: its connection, the schema (migrations) and transactions.

One database per store root, in WAL mode with foreign keys on, so that readers never
block the writer and a parent layer can never be deleted while a child names it. The
schema is the only SQL here: every statement on a table lives in that table's owner
module (layers/records.py, layers/snapshotrecords.py, images/store.py,
containers/store.py, metadata/settings.py, distribution/records.py), which is handed
the one open Database.


On a full disk the database gives up its reserve (metadata/reserve.py) and a write
that still finds no room fails as NoSpace.
"""

from __future__ import annotations

import contextlib
import pathlib
import sqlite3
import threading
from collections.abc import Iterator, Mapping

from cowstore.errors import StoreCorrupt
from cowstore.metadata.reserve import Reserve

# Each entry migrates from version index to index+1. Never edit a released entry: add one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE layers (
        cache_id   TEXT PRIMARY KEY,
        chain_id   TEXT UNIQUE,
        diff_id    TEXT,
        parent     TEXT REFERENCES layers(chain_id),
        size       INTEGER NOT NULL DEFAULT 0,
        depth      INTEGER NOT NULL DEFAULT 1,
        refcount   INTEGER NOT NULL DEFAULT 0,
        state      TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'removing')),
        tar_split  BLOB,
        created    REAL NOT NULL
    );
    CREATE INDEX layers_parent ON layers(parent);
    CREATE TABLE mounts (
        name        TEXT PRIMARY KEY,
        mount_id    TEXT NOT NULL UNIQUE,
        init_id     TEXT,
        parent      TEXT REFERENCES layers(chain_id),
        state       TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'removing')),
        mount_count INTEGER NOT NULL DEFAULT 0,
        created     REAL NOT NULL
    );
    CREATE INDEX mounts_parent ON mounts(parent);
    """,
    """
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE images (
        id         TEXT PRIMARY KEY,
        config     BLOB NOT NULL,
        top_layer  TEXT,
        created    REAL NOT NULL
    );
    CREATE TABLE tags (
        ref        TEXT PRIMARY KEY,
        image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
    );
    CREATE INDEX tags_image ON tags(image_id);
    CREATE TABLE containers (
        id         TEXT PRIMARY KEY,
        name       TEXT NOT NULL UNIQUE,
        image_id   TEXT NOT NULL,
        image_ref  TEXT NOT NULL,
        created    REAL NOT NULL
    );
    """,
    """
    CREATE TABLE leases (
        lease_id   TEXT NOT NULL,
        chain_id   TEXT NOT NULL REFERENCES layers(chain_id)
    );
    CREATE INDEX leases_lease ON leases(lease_id);
    """,
    """
    CREATE TABLE repo_digests (
        ref        TEXT PRIMARY KEY,
        image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
    );
    CREATE INDEX repo_digests_image ON repo_digests(image_id);
    CREATE TABLE blobs (
        digest     TEXT PRIMARY KEY,
        diff_id    TEXT NOT NULL,
        media_type TEXT NOT NULL,
        size       INTEGER NOT NULL,
        kept       INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX blobs_diff_id ON blobs(diff_id);
    CREATE TABLE blob_sources (
        digest     TEXT NOT NULL REFERENCES blobs(digest) ON DELETE CASCADE,
        registry   TEXT NOT NULL,
        repository TEXT NOT NULL,
        PRIMARY KEY (digest, registry, repository)
    );
    CREATE TABLE manifests (
        digest     TEXT NOT NULL,
        image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        media_type TEXT NOT NULL,
        body       BLOB NOT NULL,
        created    REAL NOT NULL,
        PRIMARY KEY (digest, image_id)
    );
    """,
    """
    CREATE TABLE snapshots (
        id         TEXT PRIMARY KEY,
        namespace  TEXT NOT NULL,
        key        TEXT NOT NULL,
        parent     TEXT REFERENCES snapshots(id),
        kind       TEXT NOT NULL CHECK (kind IN ('view', 'active', 'committed')),
        state      TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'removing')),
        labels     TEXT NOT NULL DEFAULT '{}',
        created_ns INTEGER NOT NULL,
        updated_ns INTEGER NOT NULL,
        size       INTEGER,
        inodes     INTEGER
    );
    CREATE UNIQUE INDEX snapshots_key ON snapshots(namespace, key);
    CREATE INDEX snapshots_parent ON snapshots(parent);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
# The write-ahead log is copied into the database (and starts again from its beginning)
# once it holds this many pages, not SQLite's 1000: a durable commit into a log that
# does not grow overwrites blocks the file has, and its fdatasync then writes the data
# without a commit of the filesystem's journal, which a growing file needs (on ext4, a
# millisecond or more on every container create). The copy is a few hundred KiB.
WAL_PAGES = 100
DATABASE_FILE = "cowstore.db"  # in the store root


class Database:
    """A connection to `<root>/cowstore.db`, migrated to the current schema on open."""

    def __init__(self, path: pathlib.Path, *, durable: bool = True) -> None:
        self.path = path
        self.durable = durable
        self.reserve = Reserve(path.parent)
        self._checked = threading.local()  # the connection is shared between threads
        self._relaxed = False  # synchronous=NORMAL set for a commit that need not be durable
        self.reserve.guard()
        try:
            self.conn = self._connect(durable)
        except sqlite3.OperationalError as exc:
            if not self.reserve.disk_full(exc) or not self.reserve.release():
                raise self.reserve.error(exc) from exc
            self.conn = self._connect(durable)
        self.reserve.refill()

    def _connect(self, durable: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
            conn.execute("PRAGMA user_version").fetchone()  # maps the shared-memory index now
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        self.conn.close()

    def needs_migration(self) -> bool:
        """Whether the schema is behind this cowstore (a read: no lock needed to ask)."""
        return self.conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database file and empty it.

        The log is a journal of bounded size, not storage: whoever measures what the
        store's rows take (the bench) checkpoints first.
        """
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @contextlib.contextmanager
    def _space(self) -> Iterator[None]:
        """Database errors from a full disk become NoSpace; the reserve goes, for what follows."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if not self.reserve.disk_full(exc):
                raise
            self.reserve.release()
            raise self.reserve.error(exc) from exc

    def migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreCorrupt(
                f"store schema version {version} is newer than this cowstore ({SCHEMA_VERSION}); upgrade cowstore"
            )
        for index in range(version, SCHEMA_VERSION):
            with self.transaction():
                for statement in _statements(MIGRATIONS[index]):
                    self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version={index + 1}")

    @contextlib.contextmanager
    def guarded(self) -> Iterator[None]:
        """Check the free space once for all the statements of the block, not before each.

        For a short run of statements that write a few KiB between them (a container
        layer's records and directories): far less than the margin the check keeps
        (see `Reserve.guard`). Never around work that may fill the disk (a copy, an
        extraction): the statements after it need their own check.
        """
        self._guard()
        depth = getattr(self._checked, "depth", 0)
        self._checked.depth = depth + 1
        try:
            yield
        finally:
            self._checked.depth = depth

    def _guard(self) -> None:
        if not getattr(self._checked, "depth", 0):
            self.reserve.guard()

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction; `durable=False` skips its fsync in a durable store.

        Such a commit still survives the death of the process, and is made durable by
        the next durable one; a power loss may take it back. Fit for marks that only
        matter until the operation's last, durable step (a container layer being
        created) or that mean nothing after a reboot (mount counts): on the path of every
        container create and mount, each fsync saved is a millisecond or more.
        """
        self._guard()
        with self._space():
            if self.durable and durable == self._relaxed:
                # The mode stays as the last commit needed it: a create and a mount alternate.
                self.conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._relaxed = not durable
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:  # SQLite may have rolled back already (a full disk)
                    self.conn.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: tuple | Mapping[str, object] = ()) -> list[sqlite3.Row]:
        self._guard()
        return self.conn.execute(sql, params).fetchall()

    def write(self, sql: str, params: tuple | Mapping[str, object] = (), *, durable: bool = True) -> None:
        """One statement in a transaction of its own (several that belong together share `transaction`)."""
        with self.transaction(durable=durable) as tx:
            tx.execute(sql, params)


def open_read_only(path: pathlib.Path) -> sqlite3.Connection:
    """A connection that can never write, for a look at a store before (or without) opening it."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
