"""Layer blobs arrive gzip-, zstd-, xz- or bzip2-compressed or plain; detect by magic bytes.

Decompression runs in-process on the stream (never through an external program), in a
thread of its own a few chunks ahead of the reader, so that inflating a layer overlaps
extracting it (both decoders release the GIL while they work): ISA-L's inflate (isal)
for gzip, zstandard's decoder for zstd. Every decoder failure becomes a BadImageArchive
naming the blob, so a truncated or corrupt blob is reported instead of surfacing as a
library exception. A decoder's module is imported when a blob needs it: importing a
plain tar, as `import` and most `load`s do, pays for none of them. The input file of
`import` is opened here too, so that command never loads the archive readers of `load`.
"""

from __future__ import annotations

import os
import zlib
from typing import BinaryIO, Protocol, cast

from cowstore.digest import Reader
from cowstore.host.readahead import ReadAhead
from cowstore.images.errors import BadImageArchive

# What any decoder may raise on bad data, besides its own error class.
_DECODER_ERRORS: tuple[type[Exception], ...] = (OSError, EOFError, ValueError, zlib.error)
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

    def __init__(self, reader: _Reader, errors: tuple[type[Exception], ...], what: str, kind: str) -> None:
        self._reader = reader
        self._errors = errors
        self._what = what
        self._kind = kind

    def read(self, n: int = -1) -> bytes:
        try:
            return self._reader.read(n)
        except self._errors as exc:
            raise BadImageArchive(f"{self._what}: corrupt or truncated {self._kind} data ({exc})") from None


def _decoder(kind: str, source: BinaryIO) -> tuple[_Reader, tuple[type[Exception], ...]]:
    """The decoder of `kind` over `source`, and every error it raises on bad data."""
    if kind == "gzip":
        from isal import igzip, isal_zlib

        return igzip.IGzipFile(fileobj=source, mode="rb"), (*_DECODER_ERRORS, cast("type[Exception]", isal_zlib.error))
    if kind == "zstd":
        import zstandard

        # A frame may declare a window of up to 2 GiB; cap decoder memory at zstd's default 128 MiB.
        reader = zstandard.ZstdDecompressor(max_window_size=1 << 27).stream_reader(source, read_across_frames=True)
        return reader, (*_DECODER_ERRORS, zstandard.ZstdError)
    if kind == "xz":
        import lzma

        return lzma.LZMAFile(source, mode="rb"), (*_DECODER_ERRORS, lzma.LZMAError)
    import bz2

    return bz2.BZ2File(source, mode="rb"), _DECODER_ERRORS


def decompressed(stream: Reader, what: str) -> tuple[BinaryIO, str]:
    """Wrap `stream` so reads yield the uncompressed bytes; returns (stream, compression).

    A compressed stream is decoded in a thread of its own (ReadAhead): the caller
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
    reader, errors = _decoder(kind, source)
    return ReadAhead(_Decoding(reader, errors, what, kind), f"decode {what}"), kind  # type: ignore[return-value]


def open_input(path: str | os.PathLike, shown: str | None = None) -> BinaryIO:
    """Open an archive file for reading; failure is a BadImageArchive naming the file
    (as `shown`, when given)."""
    try:
        return open(path, "rb")
    except OSError as exc:
        raise BadImageArchive(f"cannot open {shown or os.fspath(path)}: {exc.strerror}") from None
