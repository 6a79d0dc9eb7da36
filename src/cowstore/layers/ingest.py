"""The stream a layer is extracted from: hashed, counted and bounded as the driver reads it.

A layer is extracted straight from its source (a file, a decompressor, a network
stream), never spooled first: the bytes are hashed on the way through, so the diff id
is known when the extraction ends, and a layer whose digest disagrees is abandoned
before anyone can see it. The byte count and the free disk space are checked as the
bytes pass, so a hostile stream is stopped while it is being written, not after.
"""

from __future__ import annotations

import os
import pathlib

from cowstore.archive.limits import Limits
from cowstore.archive.tarstream import Observed
from cowstore.digest import Reader, verify_digest
from cowstore.drivers.driver import Driver
from cowstore.errors import ArchiveError, StagingSpaceExhausted
from cowstore.host.readahead import CHUNK, ReadAhead
from cowstore.host.writeback import EarlyFlush
from cowstore.layers.tarsplit import Recorder

# A tar carries headers and padding besides its payload, which `max-bytes` bounds.
_SLACK = 64 * 1024 * 1024
_SPACE_CHECK_EVERY = 64 * 1024 * 1024
# Write-back of a durable layer starts in the background every this many bytes read.
_FLUSH_EVERY = 16 * 1024 * 1024


class Ingest:
    """Reads `stream` for a driver's apply_diff, hashing every byte and enforcing the limits.

    The stream is read a chunk at a time and the tar reader's many small reads (a
    header, a padding) are served from that chunk: hashing, counting, the limit checks
    and the early flush happen once per chunk, not once per read. The limits are thus
    checked on bytes at most one chunk ahead of what the driver has seen. The chunks are
    read and hashed by a thread of their own (ReadAhead), beside the extraction.
    """

    def __init__(self, stream: Reader, limits: Limits, space_of: pathlib.Path, flush: EarlyFlush | None) -> None:
        self._source = ReadAhead(stream, "read layer", hashed=True)
        self._count = 0
        self._limits = limits
        self._space_of = space_of
        self._next_check = 0
        self._flush = flush
        self._next_flush = _FLUSH_EVERY
        self._buffer = b""
        self._view = memoryview(self._buffer)
        self._pos = 0

    def read(self, n: int = -1, /) -> bytes:
        if self._pos >= len(self._buffer) and not self._refill():
            return b""
        if n < 0:
            n = len(self._buffer)
        if self._pos == 0 and n >= len(self._buffer):
            self._pos = len(self._buffer)
            return self._buffer  # the whole chunk: handed over without a copy
        data = self._buffer[self._pos : self._pos + n]
        self._pos += len(data)
        return data

    def read_view(self, n: int) -> bytes | memoryview:
        """Like `read(n)`, without copying: a view into the current chunk (an immutable bytes
        object the view keeps alive). The tar reader takes payload this way."""
        if self._pos >= len(self._buffer) and not self._refill():
            return b""
        if self._pos == 0 and n >= len(self._buffer):
            self._pos = len(self._buffer)
            return self._buffer
        start = self._pos
        self._pos = min(start + n, len(self._buffer))
        return self._view[start : self._pos]

    def _refill(self) -> bool:
        """Read, hash and check the next chunk; False at the end of the stream."""
        self._buffer, self._pos = self._source.read(CHUNK), 0
        self._view = memoryview(self._buffer)
        self._count += len(self._buffer)
        count = self._count
        if count >= self._next_check and self._buffer:
            if count > self._limits.max_bytes + _SLACK:
                raise ArchiveError(f"layer larger than the limit of {self._limits.max_bytes} bytes (--limit max-bytes)")
            self._check_free_disk()
            self._next_check = min(count + _SPACE_CHECK_EVERY, self._limits.max_bytes + _SLACK + 1)
        if count >= self._next_flush and self._flush is not None:
            self._flush.kick()
            self._next_flush = count + _FLUSH_EVERY
        return bool(self._buffer)

    def _check_free_disk(self) -> None:
        fs = os.statvfs(self._space_of)
        if fs.f_bavail * fs.f_frsize < self._limits.min_free_disk:
            raise StagingSpaceExhausted(
                f"stopped storing a layer: less than {self._limits.min_free_disk} bytes free on {self._space_of} "
                "(--limit min-free-disk)"
            )

    def finish(self) -> None:
        """Read to the end of the stream (where a verifying source raises); only zeros may remain."""
        while chunk := self.read(1024 * 1024):
            if chunk.count(0) != len(chunk):
                raise ArchiveError("data after the end-of-archive marker")

    @property
    def digest(self) -> str:
        """The digest of the whole stream: valid once it was read to its end."""
        return self._source.digest

    def verify(self, expected: str, what: str) -> None:
        verify_digest(self.digest, expected, what)

    def close(self) -> None:
        """Stop reading ahead."""
        self._source.close()

    def verify_rest(self, expected: str, what: str) -> None:
        """After the tar failed to parse: DigestMismatch if the whole stream does not hash to `expected`."""
        try:
            while self.read(1024 * 1024):
                pass
        except ArchiveError:
            return  # over the size limit: that error stands
        self.verify(expected, what)


def extract(
    driver: Driver,
    id: str,
    parent: str | None,
    stream: Reader,
    limits: Limits,
    expected_diff_id: str | None,
    *,
    durable: bool,
    detached: bool = False,
) -> tuple[int, str, bytes]:
    """Extract the layer tar `stream` into driver layer `id` in one pass: (size, diff id, tar-split).

    The tar is hashed, bounded and recorded (tar-split) as the driver reads it; a
    stream that does not hash to `expected_diff_id` raises DigestMismatch once read,
    also when its tar broke first (a corrupt blob is named as such). The caller
    abandons the layer on any error. With `durable`, the layer's files are on disk when
    this returns (the driver's filesystem is flushed, starting while they are written).
    `detached` runs only the driver's first phase (`apply_detached`): the caller
    finishes the layer once its parent is complete.
    """
    flush = EarlyFlush(driver.home) if durable else None
    source = Ingest(stream, limits, driver.home, flush)
    recorder = Recorder()
    try:
        try:
            observed = Observed(source, recorder, limits)
            if detached:
                size = driver.apply_detached(id, observed)  # type: ignore[arg-type]
            else:
                size = driver.apply_diff(id, parent, observed)  # type: ignore[arg-type]
            source.finish()
        except ArchiveError:
            if expected_diff_id is not None:
                source.verify_rest(expected_diff_id, "layer")
            raise
        if expected_diff_id is not None:
            source.verify(expected_diff_id, "layer")
        if flush is not None:
            flush.finish()
        return size, source.digest, recorder.result()
    finally:
        source.close()
        if flush is not None:
            flush.close()
