"""Make a filesystem's new data durable while it is still being written.

Extracting a layer dirties thousands of pages; flushing them all at the end (one
syncfs) makes the caller wait for the whole write-back. `EarlyFlush` starts write-back
in a thread of its own as the data arrives (syncfs releases the GIL), so most of it is
on disk by the time the last file is written, and the final flush waits only for the
rest. The file descriptor is opened before the first byte is written: syncfs reports
through it every write-back error the filesystem met since then, including errors of
pages the kernel wrote back on its own between two flushes.
"""

from __future__ import annotations

import os
import threading

from cowstore.host.fsutil import syncfs_fd


class EarlyFlush:
    """Flushes the filesystem holding `path`: in the background on `kick`, for good on `finish`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self._path = os.fspath(path)
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._error: OSError | None = None

    def _syncfs(self) -> None:
        try:
            syncfs_fd(self._fd, self._path)
        except OSError as exc:
            self._error = self._error or exc

    def kick(self) -> None:
        """Start write-back of what is dirty now, unless a flush is still running."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._syncfs, name="early flush", daemon=True)
            self._thread.start()

    def finish(self) -> None:
        """Wait until everything written so far is durable; raise the first write-back error met."""
        self._join()
        self._syncfs()
        if self._error is not None:
            raise self._error

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Wait for a background flush, then let the filesystem go (nothing is left running)."""
        self._join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
