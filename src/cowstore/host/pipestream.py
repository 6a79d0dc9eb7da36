"""What a writer writes, read as a stream while it writes: a pipe fed by a thread.

A commit turns a container's changes into a tar and extracts that tar into a new layer.
Spooled to a temporary file first, a 256 MiB change is written three times (the spool,
the layer, and the spool's write-back, which the layer's flush pays for). Through a pipe
it is written once, as Docker pipes its export into its apply.

The writer's failure reaches the reader where the stream ends, so a diff that broke off
is never taken for a complete one; the reader closing early stops the writer (its next
write fails with a broken pipe, which is then no error).
"""

from __future__ import annotations

import fcntl
import io
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, cast

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

_PIPE_BYTES = 1024 * 1024  # a pipe's default 64 KiB would hand bytes over in small slices


class _Appender:
    """The write end as tarfile's plain (not stream) mode wants it: write, and tell."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._written = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        """Nothing: every write went to the pipe."""


class PipeStream(io.RawIOBase):
    """The read end of a pipe that `write` fills in a thread of its own (not seekable, as
    a diff is not: Docker's is a ReadCloser)."""

    def __init__(self, write: Callable[[BinaryIO], None], name: str) -> None:
        super().__init__()
        self._read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        try:
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:
            pass  # over /proc/sys/fs/pipe-max-size for this user: the default size works too
        self._failure: BaseException | None = None
        self._reader_gone = False
        self._thread = threading.Thread(target=self._run, args=(write, write_fd), name=name, daemon=True)
        self._thread.start()

    def _run(self, write: Callable[[BinaryIO], None], fd: int) -> None:
        try:
            write(cast(BinaryIO, _Appender(fd)))
        except BrokenPipeError:
            if not self._reader_gone:
                self._failure = BrokenPipeError("the reader of the stream went away")
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which raises it
            self._failure = exc
        finally:
            os.close(fd)

    def readinto(self, buffer: WriteableBuffer) -> int:
        with memoryview(buffer) as view:
            data = self.read(len(view))
            view[: len(data)] = data
        return len(data)

    def read(self, n: int | None = -1, /) -> bytes:
        if n is None or n < 0:
            return self.readall()
        data = os.read(self._read_fd, n)
        if not data:
            self._thread.join()
            if self._failure is not None:
                raise self._failure
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Stop reading; the writer stops at its next write, and is waited for."""
        if self._read_fd >= 0:
            self._reader_gone = True
            os.close(self._read_fd)
            self._read_fd = -1
            self._thread.join()
        super().close()


def piped(write: Callable[[BinaryIO], None], name: str) -> BinaryIO:
    """A stream of what `write(out)` writes to `out`, while it writes it (see PipeStream)."""
    return cast(BinaryIO, PipeStream(write, name))
