"""Distribution metadata: which registry blob holds which layer, where it was seen, which manifest.

Docker keeps the same facts under `image/<driver>/distribution/` (diffid-by-digest and
v2metadata-by-diffid). Here they are three tables of the store database, and this module
holds every statement on them:

- blobs: a compressed blob digest -> the diff id of the layer it unpacks to, its media
  type and size, and whether its exact bytes are kept in the blob store;
- blob_sources: the registries and repositories a blob is known to exist in (a push
  skips or mounts it from there);
- manifests: the exact manifest bytes an image was pulled or pushed with, so an
  unchanged image is pushed again under the same manifest digest.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from cowstore.metadata.db import Database


@dataclass(frozen=True)
class BlobRecord:
    digest: str
    diff_id: str
    media_type: str
    size: int
    kept: bool


@dataclass(frozen=True)
class ManifestRecord:
    digest: str
    image_id: str
    media_type: str
    body: bytes


def _blob(row: sqlite3.Row) -> BlobRecord:
    return BlobRecord(row["digest"], row["diff_id"], row["media_type"], row["size"], bool(row["kept"]))


class DistributionRecords:
    def __init__(self, db: Database) -> None:
        self.db = db

    def blob(self, digest: str) -> BlobRecord | None:
        rows = self.db.query("SELECT * FROM blobs WHERE digest = ?", (digest,))
        return _blob(rows[0]) if rows else None

    def blobs_for(self, diff_id: str) -> list[BlobRecord]:
        """The known blobs of one layer, kept ones first."""
        rows = self.db.query("SELECT * FROM blobs WHERE diff_id = ? ORDER BY kept DESC, digest", (diff_id,))
        return [_blob(row) for row in rows]

    def all_blobs(self) -> list[BlobRecord]:
        return [_blob(row) for row in self.db.query("SELECT * FROM blobs")]

    def add_blob(self, record: BlobRecord) -> None:
        """Record a verified blob; a blob once kept stays marked kept until forgotten."""
        self.db.write(
            "INSERT INTO blobs (digest, diff_id, media_type, size, kept) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(digest) DO UPDATE SET kept = MAX(kept, excluded.kept)",
            (record.digest, record.diff_id, record.media_type, record.size, int(record.kept)),
        )

    def set_kept(self, digest: str, kept: bool) -> None:
        self.db.write("UPDATE blobs SET kept = ? WHERE digest = ?", (int(kept), digest))

    def forget_blobs(self, digests: list[str]) -> None:
        with self.db.transaction() as tx:
            for digest in digests:
                tx.execute("DELETE FROM blobs WHERE digest = ?", (digest,))

    def add_source(self, digest: str, registry: str, repository: str) -> None:
        self.db.write(
            "INSERT OR IGNORE INTO blob_sources (digest, registry, repository) VALUES (?, ?, ?)",
            (digest, registry, repository),
        )

    def sources(self, digest: str) -> list[tuple[str, str]]:
        rows = self.db.query(
            "SELECT registry, repository FROM blob_sources WHERE digest = ? ORDER BY registry, repository", (digest,)
        )
        return [(row["registry"], row["repository"]) for row in rows]

    def add_manifest(self, record: ManifestRecord) -> None:
        self.db.write(
            "INSERT OR REPLACE INTO manifests (digest, image_id, media_type, body, created) VALUES (?, ?, ?, ?, ?)",
            (record.digest, record.image_id, record.media_type, record.body, time.time()),
        )

    def manifests_for(self, image_id: str) -> list[ManifestRecord]:
        """The manifests recorded for an image, newest first."""
        rows = self.db.query(
            "SELECT digest, image_id, media_type, body FROM manifests WHERE image_id = ? ORDER BY created DESC",
            (image_id,),
        )
        return [ManifestRecord(r["digest"], r["image_id"], r["media_type"], bytes(r["body"])) for r in rows]
