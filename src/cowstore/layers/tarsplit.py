"""Reassemble a layer's original tar byte for byte from its extracted files.

Drivers store files, not tars, yet a layer's DiffID is the digest of its exact tar, and
`save`/`push` must reproduce it. Like vbatts/tar-split, we keep every byte of the tar
that is not file payload (headers, padding, end marker) plus, for each payload, the
entry name, size and a CRC; re-export streams the payloads back from the layer's files.
The record is taken while the driver extracts the tar (a Recorder observes the same
tar reader), so the tar is read once. Payloads that the layer will not hold as files
(an entry later overwritten by a duplicate name) are kept inline: they are read back
from the layer just before the entry that replaces them is applied.

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

from isal import isal_zlib
from isal.isal_zlib import crc32

from cowstore.archive.apply import clean_name
from cowstore.archive.tarstream import DIRECTORY, REGULAR, TarEntry, TarObserver
from cowstore.archive.whiteouts import WHITEOUT_PREFIX
from cowstore.errors import ArchiveError, Corrupt
from cowstore.host.safepath import Root

_SEGMENT = b"S"
_FILE = b"F"
_SEGMENT_HEAD = struct.Struct("<cQ")  # tag, length of the raw bytes that follow
_FILE_HEAD = struct.Struct("<cQQI")  # tag, body length, then the body's size and crc32 (the name follows)
_CHUNK = 1024 * 1024


class TarSplitError(Corrupt):
    """The stored layer no longer matches its recorded tar (files changed on disk)."""


class _Payload:
    """One file's bytes in the tar: how to recognise them later, or the bytes themselves."""

    __slots__ = ("crc", "inline", "name", "rel", "size")

    def __init__(self, name: str, rel: str, size: int) -> None:
        self.name = name
        self.rel = rel
        self.size = size
        self.crc = 0
        self.inline: bytearray | None = None


class Recorder(TarObserver):
    """Builds the tar-split record of a layer tar while a driver extracts it.

    A payload is kept inline, not as a reference to a layer file, when the layer will
    not hold it as a file: it is overwritten by a later entry of the same name, its
    directory is replaced by a non-directory, or it lies under a whiteout name (never
    extracted).
    """

    def __init__(self) -> None:
        self._items: list[bytes | _Payload] = []  # raw segments and file payloads, in tar order
        self._pending = bytearray()
        self._files: dict[tuple[str, ...], _Payload] = {}  # name -> the payload the layer holds as that file
        self._dirs: set[tuple[str, ...]] = set()
        self._current: _Payload | None = None
        self._root: Root | None = None

    def start(self, root: Root) -> None:
        self._root = root

    def segment(self, raw: bytes) -> None:
        self._pending += raw

    def entry(self, entry: TarEntry) -> None:
        if self._pending:
            self._items.append(bytes(self._pending))
            self._pending.clear()
        key = tuple(clean_name(entry.name, entry.name))
        replaced = self._files.pop(key, None)
        if replaced is not None:
            self._read_back(replaced)
        if entry.kind == DIRECTORY:
            self._dirs.add(key)
        elif key in self._dirs:
            self._forget_below(key)
        self._current = None
        if entry.kind == REGULAR and entry.size:
            payload = _Payload(entry.name, "/".join(key), entry.size)
            self._items.append(payload)
            if WHITEOUT_PREFIX in entry.name and any(part.startswith(WHITEOUT_PREFIX) for part in key):
                payload.inline = bytearray()
            else:
                self._files[key] = payload
            self._current = payload

    def payload(self, chunk: bytes | memoryview) -> None:
        current = self._current
        if current is not None:
            current.crc = crc32(chunk, current.crc)
            if current.inline is not None:
                current.inline += chunk

    def _forget_below(self, key: tuple[str, ...]) -> None:
        """A directory replaced by a non-directory takes everything recorded below it along."""
        depth = len(key)
        for name in [k for k in self._files if k[:depth] == key]:
            self._read_back(self._files.pop(name))
        self._dirs.difference_update({d for d in self._dirs if d[:depth] == key})

    def _read_back(self, payload: _Payload) -> None:
        """Keep a payload inline: read it from the layer before the entry replacing it is applied."""
        if self._root is None:
            raise TarSplitError(f"cannot keep the payload of {payload.name}: the tar is not being extracted")
        try:
            fd = self._root.open(payload.rel, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise TarSplitError(f"layer file {payload.name} is missing: {exc}") from None
        with os.fdopen(fd, "rb") as fh:
            data = bytearray(fh.read(payload.size + 1))
        if len(data) != payload.size:
            raise TarSplitError(f"layer file {payload.name} changed while the layer was extracted")
        payload.inline = data

    def result(self) -> bytes:
        """The gzip'ed record, once the whole tar was read."""
        if self._pending:
            self._items.append(bytes(self._pending))
            self._pending.clear()
        # a gzip stream; ISA-L's fastest level compresses headers well, some five times faster than zlib's
        compressor = isal_zlib.compressobj(1, zlib.DEFLATED, 31)
        out: list[bytes] = []
        batch: list[bytes | bytearray] = []
        for item in self._items:
            if isinstance(item, bytes):
                batch += (_SEGMENT_HEAD.pack(_SEGMENT, len(item)), item)
            elif item.inline is not None:
                batch += (_SEGMENT_HEAD.pack(_SEGMENT, len(item.inline)), item.inline)
            else:
                name = os.fsencode(item.name)
                batch += (_FILE_HEAD.pack(_FILE, 12 + len(name), item.size, item.crc), name)
            if len(batch) >= 512:
                out.append(compressor.compress(b"".join(batch)))
                batch.clear()
        out.append(compressor.compress(b"".join(batch)))
        out.append(compressor.flush())
        return b"".join(out)


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


def tar_size(data: bytes) -> int:
    """The size of the tar that `assemble` writes, from the record alone."""
    total = 0
    for tag, body in _records(data):
        total += len(body) if tag == _SEGMENT else struct.unpack("<Q", body[:8])[0]
    return total


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
                    chunk = fh.read(min(left, _CHUNK))
                    if not chunk:
                        break
                    actual = crc32(chunk, actual)
                    left -= len(chunk)
                    out_write(chunk)
            if left or actual != crc:
                raise TarSplitError(f"file integrity checksum failed for {name}")
