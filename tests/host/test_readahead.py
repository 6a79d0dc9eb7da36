"""ReadAhead: a stream read (and hashed) by a thread of its own, handed over in order."""

from __future__ import annotations

import hashlib
import io
import threading

import pytest

from cowstore.host.readahead import CHUNK, ReadAhead


class _Failing:
    """A stream that yields `good` bytes, then raises."""

    def __init__(self, good: bytes) -> None:
        self._good = io.BytesIO(good)

    def read(self, n: int = -1, /) -> bytes:
        data = self._good.read(n)
        if not data:
            raise OSError("the disk went away")
        return data


def test_chunks_arrive_whole_and_in_order_with_their_digest() -> None:
    data = bytes(range(256)) * (CHUNK * 9 // 256 + 7)  # more chunks than are read ahead
    ahead = ReadAhead(io.BytesIO(data), "test", hashed=True)
    chunks = []
    while chunk := ahead.read(CHUNK):
        chunks.append(chunk)
    assert b"".join(chunks) == data
    assert all(len(c) == CHUNK for c in chunks[:-1])
    assert ahead.read(CHUNK) == b""  # the end stays the end
    assert ahead.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    ahead.close()


def test_small_and_whole_reads() -> None:
    ahead = ReadAhead(io.BytesIO(b"abcdefgh" * 3), "test")
    assert ahead.read(3) == b"abc"
    assert ahead.read() == b"defgh" + b"abcdefgh" * 2
    with pytest.raises(ValueError):
        ahead.digest  # noqa: B018 - not hashed
    ahead.close()


def test_an_error_is_raised_where_the_stream_broke_and_again_after() -> None:
    ahead = ReadAhead(_Failing(b"x" * 10), "test", hashed=True)
    assert ahead.read(CHUNK) == b"x" * 10
    for _ in range(2):
        with pytest.raises(OSError, match="went away"):
            ahead.read(CHUNK)
    with pytest.raises(ValueError):
        ahead.digest  # noqa: B018 - the stream never ended
    ahead.close()


def test_close_before_the_end_stops_the_thread() -> None:
    before = threading.active_count()
    ahead = ReadAhead(io.BytesIO(b"\0" * (CHUNK * 20)), "test", hashed=True)
    assert ahead.read(10) == b"\0" * 10
    ahead.close()
    ahead.close()
    assert threading.active_count() == before
