"""Reassemble a layer's original tar byte for byte from its extracted files.

Drivers store files, not tars, yet a layer's DiffID is the digest of its exact tar, and
`save`/`push` must reproduce it. Like vbatts/tar-split, we keep every byte of the tar
that is not file payload (headers, padding, end marker) plus, for each payload, the
entry name, size and a CRC; re-export streams the payloads back from the layer's files.
Payloads that the layer no longer holds as files (an entry later overwritten by a
duplicate name) are kept inline.

Format: gzip of a sequence of records, each a 1-byte tag and a length-prefixed body:
`S` raw segment bytes; `F` file: size (8 bytes), crc32 (4 bytes), name bytes.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO, NamedTuple

from cowstore.archive.apply import clean_name
from cowstore.archive.tarstream import DIRECTORY, REGULAR, Limits, TarReader
from cowstore.archive.whiteouts import WHITEOUT_PREFIX
from cowstore.errors import ArchiveError, Corrupt
from cowstore.host.safepath import Root

_SEGMENT = b"S"
_FILE = b"F"


class TarSplitError(Corrupt):
    """The stored layer no longer matches its recorded tar (files changed on disk)."""


class _Payload(NamedTuple):
    """Where a file's bytes sit in the spooled tar, and how to recognise them later."""

    name: str
    size: int
    crc: int
    offset: int


def _record(out: gzip.GzipFile, tag: bytes, body: bytes) -> None:
    out.write(tag + struct.pack("<Q", len(body)) + body)


def disassemble(spool: BinaryIO, limits: Limits | None = None) -> bytes:
    """Parse the tar in the seekable `spool` and return its gzip'ed tar-split record.

    Validates the tar with the same strict reader that extraction uses. A payload is
    kept inline, not as a reference to a layer file, when the layer will not hold it
    as a file: it was overwritten by a later entry of the same name, its directory was
    replaced by a non-directory, or it lies under a whiteout name (never extracted).
    """
    items: list[bytes | _Payload] = []  # raw segments and file payloads, in tar order
    pending = bytearray()

    def on_segment(raw: bytes) -> None:
        pending.extend(raw)

    reader = TarReader(spool, limits, on_segment=on_segment)
    files: dict[tuple[str, ...], int] = {}  # name -> index in items of the payload kept as a file
    dirs: set[tuple[str, ...]] = set()
    for entry in reader:
        if pending:
            items.append(bytes(pending))
            pending.clear()
        key = tuple(clean_name(entry.name, entry.name))
        files.pop(key, None)
        if entry.kind == DIRECTORY:
            dirs.add(key)
        elif key in dirs:
            _forget_below(key, files, dirs)
        if entry.kind == REGULAR and entry.size:
            offset = spool.tell()
            crc = 0
            for chunk in reader.read_payload():
                crc = zlib.crc32(chunk, crc)
            items.append(_Payload(entry.name, entry.size, crc, offset))
            if not any(part.startswith(WHITEOUT_PREFIX) for part in key):
                files[key] = len(items) - 1
    if pending:
        items.append(bytes(pending))
    keep_as_file = set(files.values())
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as out:
        for index, item in enumerate(items):
            if isinstance(item, bytes):
                _record(out, _SEGMENT, item)
            elif index in keep_as_file:
                _record(out, _FILE, struct.pack("<QI", item.size, item.crc) + os.fsencode(item.name))
            else:
                _record_from(out, spool, item.offset, item.size)
    return buf.getvalue()


def _forget_below(key: tuple[str, ...], files: dict[tuple[str, ...], int], dirs: set[tuple[str, ...]]) -> None:
    """A directory replaced by a non-directory takes everything recorded below it along."""
    depth = len(key)
    for name in [k for k in files if k[:depth] == key]:
        del files[name]
    dirs.difference_update({d for d in dirs if d[:depth] == key})


def _record_from(out: gzip.GzipFile, spool: BinaryIO, offset: int, size: int) -> None:
    """A segment record whose body is `size` bytes of the spool, copied in chunks."""
    out.write(_SEGMENT + struct.pack("<Q", size))
    spool.seek(offset)
    left = size
    while left:
        chunk = spool.read(min(left, 1024 * 1024))
        out.write(chunk)
        left -= len(chunk)


def _records(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    stream = gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb")
    while True:
        head = stream.read(9)
        if not head:
            return
        if len(head) != 9:
            raise TarSplitError("corrupt tar-split record")
        body = stream.read(struct.unpack("<Q", head[1:])[0])
        yield head[:1], body


def assemble(data: bytes, root: str | os.PathLike, out_write: Callable[[bytes], object]) -> None:
    """Write the original tar to `out_write`, reading payloads from the layer at `root`."""
    with Root(root) as fs:
        for tag, body in _records(data):
            if tag == _SEGMENT:
                out_write(body)
                continue
            size, crc = struct.unpack("<QI", body[:12])
            name = os.fsdecode(body[12:])
            try:
                rel = "/".join(clean_name(name, name))
                fd = fs.open(rel, os.O_RDONLY | os.O_NOFOLLOW)
            except (OSError, ArchiveError) as exc:
                raise TarSplitError(f"layer file {name} is missing: {exc}") from None
            with os.fdopen(fd, "rb") as fh:
                left, actual = size, 0
                while left:
                    chunk = fh.read(min(left, 1024 * 1024))
                    if not chunk:
                        break
                    actual = zlib.crc32(chunk, actual)
                    left -= len(chunk)
                    out_write(chunk)
            if left or actual != crc:
                raise TarSplitError(f"file integrity checksum failed for {name}")
