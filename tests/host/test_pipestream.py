"""The pipe a diff streams through: every byte arrives, a failure is raised where the
stream ends, and a reader that stops early stops the writer."""

from __future__ import annotations

import threading
from typing import BinaryIO

import pytest

from cowstore.host.pipestream import piped


def test_what_the_writer_writes_is_read_in_order() -> None:
    pieces = [bytes([i]) * (i * 9973) for i in range(1, 60)]

    def write(out: BinaryIO) -> None:
        for piece in pieces:
            out.write(piece)

    with piped(write, "test") as stream:
        assert stream.read() == b"".join(pieces)
        assert stream.read(10) == b""


def test_a_writer_that_fails_fails_the_reader_at_the_end() -> None:
    def write(out: BinaryIO) -> None:
        out.write(b"x" * 100)
        raise FileNotFoundError(2, "No such file or directory", "upper/f")

    with piped(write, "test") as stream:
        assert stream.read(100) == b"x" * 100
        with pytest.raises(FileNotFoundError, match="upper/f"):
            stream.read(100)


def test_a_reader_that_stops_early_stops_the_writer() -> None:
    stopped = threading.Event()

    def write(out: BinaryIO) -> None:
        try:
            while True:
                out.write(b"y" * 65536)
        finally:
            stopped.set()

    stream = piped(write, "test")
    assert stream.read(10) == b"y" * 10
    stream.close()  # waits for the writer, which met a broken pipe: no error
    assert stopped.is_set()
    assert stream.closed
