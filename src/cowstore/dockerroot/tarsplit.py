"""Docker's `tar-split.json.gz`: replay a layer's exact tar from the driver's files.

Docker stores files, not tars, and keeps beside each layer what its tar had besides
file payloads (vbatts/tar-split): gzip'ed JSON lines, `{"type": 2, "payload": <base64>}`
for raw bytes (headers, padding, the end of archive) and `{"type": 1, "name": ...,
"size": N, "payload": <crc64>}` for a file whose N bytes are read back from the layer.
Replaying them gives the original tar byte for byte, hence its diff id.

The per-file CRC-64 is not recomputed: the caller hashes the whole stream and checks it
against the layer's diff id, which catches every changed byte (and a pure-Python
CRC-64 would cost more than the copy). File names come from the source, so they are
resolved inside the layer as under chroot and never reach anything outside it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import json
import os
import pathlib
import zlib
from collections.abc import Iterator

from cowstore.archive.apply import clean_name
from cowstore.errors import ArchiveError, Corrupt
from cowstore.host.safepath import Root

_MAX_LINE = 64 * 1024 * 1024  # one header with its PAX records; far above anything real
_CHUNK = 1024 * 1024
_FILE, _SEGMENT = 1, 2


class BadTarSplit(Corrupt):
    """A tar-split record is malformed, or names a file the layer does not hold."""


def _entries(path: pathlib.Path) -> Iterator[dict]:
    try:
        with gzip.open(path, "rb") as fh:
            while line := fh.readline(_MAX_LINE + 1):
                if len(line) > _MAX_LINE:
                    raise BadTarSplit(f"{path}: a record is longer than {_MAX_LINE} bytes")
                if not line.strip():
                    continue
                entry = json.loads(line)
                if not isinstance(entry, dict):
                    raise BadTarSplit(f"{path}: a record is not a JSON object")
                yield entry
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise BadTarSplit(f"{path}: {exc}") from None


def _name(entry: dict) -> str:
    raw = entry.get("name_raw")
    if raw:
        return os.fsdecode(base64.b64decode(raw))
    name = entry.get("name")
    if not isinstance(name, str):
        raise BadTarSplit("a file record has no name")
    return name


def _payload(entry: dict) -> bytes:
    try:
        return base64.b64decode(entry.get("payload") or b"", validate=True)
    except (binascii.Error, TypeError) as exc:
        raise BadTarSplit(f"a segment record has a bad payload: {exc}") from None


def _file_chunks(fs: Root, name: str, size: int) -> Iterator[bytes]:
    try:
        rel = "/".join(clean_name(name, name))
        fd = fs.open(rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except (OSError, ArchiveError) as exc:
        raise BadTarSplit(f"layer file {name} is missing: {exc}") from None
    with os.fdopen(fd, "rb") as fh:
        left = size
        while left:
            chunk = fh.read(min(left, _CHUNK))
            if not chunk:
                raise BadTarSplit(f"layer file {name} is shorter than the {size} bytes its tar held")
            left -= len(chunk)
            yield chunk


def chunks(split: pathlib.Path, files: pathlib.Path) -> Iterator[bytes]:
    """The original tar, in pieces: segments verbatim, payloads read from the layer at `files`."""
    with Root(files) as fs:
        for entry in _entries(split):
            kind = entry.get("type")
            if kind == _SEGMENT:
                yield _payload(entry)
            elif kind == _FILE:
                size = entry.get("size") or 0
                if not isinstance(size, int) or size < 0:
                    raise BadTarSplit(f"{split}: a file record has a bad size")
                if size:
                    yield from _file_chunks(fs, _name(entry), size)
            else:
                raise BadTarSplit(f"{split}: unknown record type {kind!r}")


class ChunkReader:
    """A read()-able stream over chunks, closing `stack` (mounts, descriptors) when done."""

    def __init__(self, source: Iterator[bytes], stack: contextlib.ExitStack) -> None:
        self._source = source
        self._stack = stack
        self._buffer = b""

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            data, self._buffer = self._buffer + b"".join(self._source), b""
            return data
        while len(self._buffer) < n:
            chunk = next(self._source, None)
            if chunk is None:
                break
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> ChunkReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
