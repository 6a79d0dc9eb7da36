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
from cowstore.digest import DigestingReader, Reader
from cowstore.drivers.driver import Driver
from cowstore.errors import ArchiveError, StagingSpaceExhausted
from cowstore.layers.tarsplit import Recorder

# A tar carries headers and padding besides its payload, which `max-bytes` bounds.
_SLACK = 64 * 1024 * 1024
_SPACE_CHECK_EVERY = 64 * 1024 * 1024


class Ingest(DigestingReader):
    """Reads `stream` for a driver's apply_diff, hashing every byte and enforcing the limits."""

    def __init__(self, stream: Reader, limits: Limits, space_of: pathlib.Path) -> None:
        super().__init__(stream)
        self._limits = limits
        self._space_of = space_of
        self._next_check = 0

    def read(self, n: int = -1, /) -> bytes:
        data = super().read(n)
        if self.count >= self._next_check and data:
            if self.count > self._limits.max_bytes + _SLACK:
                raise ArchiveError(f"layer larger than the limit of {self._limits.max_bytes} bytes (--limit max-bytes)")
            self._check_free_disk()
            self._next_check = min(self.count + _SPACE_CHECK_EVERY, self._limits.max_bytes + _SLACK + 1)
        return data

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

    def verify_rest(self, expected: str, what: str) -> None:
        """After the tar failed to parse: DigestMismatch if the whole stream does not hash to `expected`."""
        try:
            self.drain()
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
    detached: bool = False,
) -> tuple[int, str, bytes]:
    """Extract the layer tar `stream` into driver layer `id` in one pass: (size, diff id, tar-split).

    The tar is hashed, bounded and recorded (tar-split) as the driver reads it; a
    stream that does not hash to `expected_diff_id` raises DigestMismatch once read,
    also when its tar broke first (a corrupt blob is named as such). The caller
    abandons the layer on any error. `detached` runs only the driver's first phase
    (`apply_detached`): the caller finishes the layer once its parent is complete.
    """
    source = Ingest(stream, limits, driver.home)
    recorder = Recorder()
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
    return size, source.digest, recorder.result()
