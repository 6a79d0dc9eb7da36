"""A stream read in a thread of its own, a few chunks ahead of its reader.

Extracting a layer is Python work on one core; reading its bytes (a copy out of the page
cache, a decompressor, a socket) and hashing them need not wait for it. The decoders
(ISA-L's inflate, zstandard) and hashlib's sha256 let go of the interpreter lock while
they work, so in this thread they run on another core while the reader extracts.
"""

from __future__ import annotations

import hashlib
import queue
import threading

from cowstore.digest import Reader

CHUNK = 1024 * 1024
_AHEAD = 4  # chunks read ahead of the reader: bounds the memory a stream takes


class ReadAhead:
    """Reads `reader` in a thread of its own, up to a few chunks ahead; close() stops it.

    What the thread raises is raised to the reader, at the point of the stream where it
    happened; the end of the stream stays the end. With `hashed`, the thread also hashes
    every chunk it reads: `digest` is the sha256 of the whole stream once `read` has
    returned its end.
    """

    def __init__(self, reader: Reader, name: str, *, hashed: bool = False) -> None:
        self._reader = reader
        self._hash = hashlib.sha256() if hashed else None
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=_AHEAD)
        self._closed = threading.Event()
        self._buffer = b""
        self._pos = 0
        self._end: bytes | BaseException | None = None
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._closed.is_set():
                chunk = self._reader.read(CHUNK)
                if self._hash is not None:
                    self._hash.update(chunk)
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
        data = self._buffer[self._pos : self._pos + n]  # a whole chunk is handed over, not copied
        self._pos += len(data)
        return data

    @property
    def digest(self) -> str:
        """sha256 of the stream (with `hashed`), once it was read to its end."""
        if self._hash is None or self._end != b"":
            raise ValueError("the digest of a stream is known only once it was hashed and read to its end")
        self._thread.join()
        return "sha256:" + self._hash.hexdigest()

    def close(self) -> None:
        self._closed.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
        self._thread.join()
