"""Deterministic layer compression for push: the same tar always gives the same blob.

gzip is written as a series of members of 4 MiB of input each (RFC 1952 allows several;
Go's, zlib's and Python's readers all read them as one stream). Each member is level 1,
or level 0 (stored) when a probe of its first 64 KiB does not shrink: deflate spends as
long on incompressible bytes (random data, already compressed files) as on text, about
13 MB/s here, while a stored member costs little more than a copy. The choice depends
only on the bytes, so it is as deterministic as the rest (mtime 0, fixed levels). zstd
uses one frame at a fixed level on a single thread, which is deterministic by design.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from typing import BinaryIO

import zstandard

GZIP_LEVEL = 1  # fixed forever: a layer compressed again must give the same bytes
ZSTD_LEVEL = 3
MEMBER = 4 * 1024 * 1024
_PROBE = 64 * 1024
_INCOMPRESSIBLE = 0.97  # a probe that keeps more than this share of its size is stored


def _member(chunk: bytes) -> bytes:
    probe = chunk[:_PROBE]
    level = GZIP_LEVEL if len(zlib.compress(probe, GZIP_LEVEL)) < _INCOMPRESSIBLE * len(probe) else 0
    return gzip.compress(chunk, compresslevel=level, mtime=0)


def _read_full(source: BinaryIO, size: int) -> bytes:
    """Exactly `size` bytes unless the end comes first: the member boundaries must not vary."""
    parts, left = [], size
    while left > 0:
        data = source.read(left)
        if not data:
            break
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def compress(source: BinaryIO, write: Callable[[bytes], None], kind: str, progress: Callable[[int], None]) -> None:
    """Compress all of `source` with `kind` ("gzip" or "zstd") into `write`."""
    if kind == "zstd":
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
        while chunk := source.read(MEMBER):
            write(compressor.compress(chunk))
            progress(len(chunk))
        write(compressor.flush())
        return
    empty = True
    while chunk := _read_full(source, MEMBER):
        write(_member(chunk))
        progress(len(chunk))
        empty = False
    if empty:
        write(gzip.compress(b"", compresslevel=GZIP_LEVEL, mtime=0))
