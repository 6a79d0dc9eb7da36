"""The kept registry blobs: exact compressed layer bytes under `<root>/distribution/blobs/`.

Why keep them: a registry names a layer by the digest of its compressed bytes, and gzip
output depends on the compressor, so the same layer recompressed by another program is a
different blob and the image a different manifest. Keeping the blob as it arrived (as
containerd's content store does) lets an unchanged image be pushed anywhere under the
same manifest digest, and a blob we compressed once is pushed again as the same bytes.
A blob is kept while a layer with its diff id is stored; `prune` drops the others.

A blob is written by one downloader into `ingest/` while a follower reads the part
already written (the layer is extracted as it arrives, not after a full download); it
moves to `blobs/sha256/<hex>` only once its size and digest are checked, and the
follower sees the end of the data only then, or the error.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pathlib
import threading
from collections.abc import Callable, Iterable

from cowstore.digest import check_digest, random_id
from cowstore.distribution.errors import BlobCorrupt
from cowstore.distribution.records import DistributionRecords
from cowstore.errors import CowstoreError

_READ = 1024 * 1024


class Cancelled(CowstoreError):
    """A transfer was stopped because another part of the same operation failed."""


class BlobStore:
    """Kept blobs of one store root; the rows that describe them are in DistributionRecords."""

    def __init__(self, root: pathlib.Path, records: DistributionRecords) -> None:
        self.root = root / "distribution"
        self.blobs = self.root / "blobs" / "sha256"
        self.ingest_dir = self.root / "ingest"
        for path in (self.root, self.blobs, self.ingest_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.records = records

    def path(self, digest: str) -> pathlib.Path:
        return self.blobs / check_digest(digest)[7:]

    def has(self, digest: str) -> bool:
        record = self.records.blob(digest)
        return record is not None and record.kept and self.path(digest).is_file()

    def ingest(self, digest: str, size: int | None) -> Ingest:
        return Ingest(self, digest, size)

    def remove_abandoned_ingests(self) -> list[str]:
        """Delete partial blobs of killed transfers (nobody holds their lock)."""
        removed = []
        for path in self.ingest_dir.iterdir():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink(missing_ok=True)
                removed.append(path.name)
            except BlockingIOError:
                continue  # a transfer in progress holds it
            finally:
                os.close(fd)
        return removed

    def prune(self, live_diff_ids: Iterable[str]) -> list[str]:
        """Forget blobs whose layer is no longer stored; delete their files and stray files."""
        live = set(live_diff_ids)
        dead = [record.digest for record in self.records.all_blobs() if record.diff_id not in live]
        self.records.forget_blobs(dead)
        kept = {record.digest[7:] for record in self.records.all_blobs() if record.kept}
        removed = []
        for path in self.blobs.iterdir():
            if path.name not in kept:
                path.unlink(missing_ok=True)
                removed.append(f"sha256:{path.name}")
        return removed


class Ingest:
    """One blob being written by a downloader (or compressor) and read, as it grows, by a follower."""

    def __init__(self, store: BlobStore, digest: str, size: int | None) -> None:
        self.store = store
        self.digest = check_digest(digest) if digest else ""
        self.size = size
        self.path = store.ingest_dir / f"{random_id()[:16]}.partial"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)  # held while the transfer lives: see remove_abandoned_ingests
        self._hash = hashlib.sha256()
        self.written = 0
        self.done = False
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self.committed = False

    # ---- the writer --------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.size is not None and self.written + len(data) > self.size:
            raise BlobCorrupt(f"blob {self.digest} is larger than the {self.size} bytes its descriptor announced")
        view = memoryview(data)
        while view:
            count = os.pwrite(self.fd, view, self.written + (len(data) - len(view)))
            view = view[count:]
        self._hash.update(data)
        with self._cond:
            self.written += len(data)
            self._cond.notify_all()

    @property
    def actual_digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def finish(self) -> str:
        """Check size and digest, move the blob into the store; the follower then sees its end."""
        try:
            if self.size is not None and self.written != self.size:
                raise BlobCorrupt(f"blob {self.digest} is {self.written} bytes, its descriptor says {self.size}")
            if self.digest and self.actual_digest != self.digest:
                raise BlobCorrupt(f"blob has digest {self.actual_digest}, expected {self.digest}")
            self.digest = self.actual_digest
            os.fsync(self.fd)
            os.replace(self.path, self.store.path(self.digest))
            self.committed = True
        except BaseException as exc:
            self.fail(exc)
            raise
        with self._cond:
            self.done = True
            self._cond.notify_all()
        return self.digest

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            if self.error is None:
                self.error = exc
            self._cond.notify_all()

    def close(self) -> None:
        """Release the file; an uncommitted blob is deleted."""
        if not self.committed:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # ---- the follower ------------------------------------------------------------------

    def follower(self, on_read: Callable[[int], None] | None = None) -> Follower:
        return Follower(self, on_read)

    def wait_readable(self, position: int) -> int:
        """Block until bytes past `position` exist or the blob ended; returns how many are readable."""
        with self._cond:
            while self.written <= position and not self.done and self.error is None:
                self._cond.wait(1.0)
            if self.error is not None:
                raise self.error
            return self.written - position


class Follower:
    """Reads a blob's bytes as the writer appends them; at the end, only after verification."""

    def __init__(self, ingest: Ingest, on_read: Callable[[int], None] | None) -> None:
        self._ingest = ingest
        self._position = 0
        self._on_read = on_read

    def read(self, n: int = -1) -> bytes:
        available = self._ingest.wait_readable(self._position)
        if available <= 0:
            return b""
        want = _READ if n is None or n < 0 else n
        data = os.pread(self._ingest.fd, min(want, available), self._position)
        self._position += len(data)
        if self._on_read:
            self._on_read(len(data))
        return data


class CountingReader:
    """A kept blob file read with progress reporting (the layer already downloaded before)."""

    def __init__(self, path: pathlib.Path, on_read: Callable[[int], None] | None) -> None:
        self._handle = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._on_read = on_read

    def read(self, n: int = -1) -> bytes:
        data = self._handle.read(n)
        if self._on_read and data:
            self._on_read(len(data))
        return data

    def close(self) -> None:
        self._handle.close()
