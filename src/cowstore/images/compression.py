"""Layer blobs arrive gzip-, zstd-, xz- or bzip2-compressed or plain; detect by magic bytes.

Decompression runs in-process on the stream (never through an external program), in a
thread of its own a few chunks ahead of the reader, so that inflating a layer overlaps
extracting it (both decoders release the GIL while they work): ISA-L's inflate (isal)
for gzip, zstandard's decoder for zstd. Every decoder failure becomes a BadImageArchive
naming the blob, so a truncated or corrupt blob is reported instead of surfacing as a
library exception.
"""

from __future__ import annotations

import bz2
import lzma
import queue
import threading
import zlib
from typing import BinaryIO, Protocol, cast

import zstandard
from isal import igzip, isal_zlib

from cowstore.digest import Reader
from cowstore.images.errors import BadImageArchive

_ISAL_ERROR = cast("type[Exception]", isal_zlib.error)
_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bzip2",
}


class _Prefixed:
    """A stream with bytes already read (the magic) put back in front."""

    def __init__(self, head: bytes, stream: Reader) -> None:
        self._head = head
        self._stream = stream

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0:
                data, self._head = self._head + self._stream.read(), b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            if len(data) < n:
                data += self._stream.read(n - len(data))
            return data
        return self._stream.read(n)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to stop: the underlying stream belongs to the caller."""


def detect(head: bytes) -> str:
    """The compression named by the first bytes of a blob ("plain" when none)."""
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    return "plain"


class _Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _Decoding:
    """Reads the decompressed bytes and turns decoder errors into BadImageArchive."""

    def __init__(self, reader: _Reader, what: str, kind: str) -> None:
        self._reader = reader
        self._what = what
        self._kind = kind

    def read(self, n: int = -1) -> bytes:
        try:
            return self._reader.read(n)
        except (OSError, EOFError, zlib.error, _ISAL_ERROR, lzma.LZMAError, zstandard.ZstdError, ValueError) as exc:
            raise BadImageArchive(f"{self._what}: corrupt or truncated {self._kind} data ({exc})") from None


_CHUNK = 1024 * 1024
_AHEAD = 4  # chunks decoded ahead of the reader: bounds the memory a layer's decoding takes


class Threaded:
    """Reads `reader` in a thread of its own, up to a few chunks ahead; close() stops it.

    What the thread raises is raised to the reader, at the point of the stream where it
    happened; the end of the stream stays the end.
    """

    def __init__(self, reader: _Reader, what: str) -> None:
        self._reader = reader
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=_AHEAD)
        self._closed = threading.Event()
        self._buffer = b""
        self._pos = 0
        self._end: bytes | BaseException | None = None
        self._thread = threading.Thread(target=self._produce, name=f"decode {what}", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._closed.is_set():
                chunk = self._reader.read(_CHUNK)
                self._put(chunk)
                if not chunk:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which raises it
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _fill(self) -> bool:
        """Take the next chunk from the thread; False at the end of the stream."""
        if self._end is not None:
            if isinstance(self._end, BaseException):
                raise self._end
            return False
        item = self._queue.get()
        if isinstance(item, BaseException) or not item:
            self._end = item
            return self._fill()
        self._buffer, self._pos = item, 0
        return True

    def read(self, n: int = -1, /) -> bytes:
        if n is None or n < 0:
            parts = [self._buffer[self._pos :]]
            self._buffer, self._pos = b"", 0
            while self._fill():
                parts.append(self._buffer)
                self._buffer, self._pos = b"", 0
            return b"".join(parts)
        if self._pos >= len(self._buffer) and not self._fill():
            return b""
        data = self._buffer[self._pos : self._pos + n]
        self._pos += len(data)
        return data

    def close(self) -> None:
        self._closed.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
        self._thread.join()


def decompressed(stream: Reader, what: str) -> tuple[BinaryIO, str]:
    """Wrap `stream` so reads yield the uncompressed bytes; returns (stream, compression).

    A compressed stream is decoded in a thread of its own (see Threaded): the caller
    closes the stream it gets, which stops that thread.
    """
    head = b""
    while len(head) < 6:
        chunk = stream.read(6 - len(head))
        if not chunk:
            break
        head += chunk
    kind = detect(head)
    source = cast(BinaryIO, _Prefixed(head, stream))  # read() is all a decoder calls
    if kind == "plain":
        return source, kind
    # The decoder is not a `with` block: it is handed to the caller, who reads and closes `stream`.
    reader: _Reader
    if kind == "gzip":
        reader = igzip.IGzipFile(fileobj=source, mode="rb")
    elif kind == "zstd":
        # A frame may declare a window of up to 2 GiB; cap decoder memory at zstd's default 128 MiB.
        reader = zstandard.ZstdDecompressor(max_window_size=1 << 27).stream_reader(source, read_across_frames=True)
    elif kind == "xz":
        reader = lzma.LZMAFile(source, mode="rb")
    else:
        reader = bz2.BZ2File(source, mode="rb")
    return Threaded(_Decoding(reader, what, kind), what), kind  # type: ignore[return-value]
