"""Inter-process locks of a store: one shared/exclusive store lock, and per-operation locks.

The store lock guards short metadata transactions. Long work (extracting a layer,
copying a tree) runs outside it, under an operation lock named after the layer's driver
id: while the lock is held the operation is alive; a free lock on a record left in state
`creating` or `removing` means its process died, and the next opener finishes the job.
fcntl locks die with their process, so a crash can never leave a lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import time
from collections.abc import Iterator

from cowstore.errors import StoreLocked

DEFAULT_TIMEOUT = 120.0


class StoreLock:
    """flock on `<root>/store.lock`; re-entrant within one process and thread of use."""

    def __init__(self, path: pathlib.Path, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._depth = 0
        self._mode = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _acquire(self, mode: int) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self._fd, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreLocked(
                        f"store is locked by another cowstore process for more than {self.timeout:.0f}s ({self.path})"
                    ) from None
                time.sleep(0.01)

    @contextlib.contextmanager
    def hold(self, exclusive: bool) -> Iterator[None]:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        if self._depth and (self._mode == fcntl.LOCK_EX or mode == fcntl.LOCK_SH):
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        previous = self._mode
        self._acquire(mode)
        self._mode, self._depth = mode, self._depth + 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth:
                self._acquire(previous)
                self._mode = previous
            else:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                self._mode = 0

    def shared(self) -> contextlib.AbstractContextManager[None]:
        return self.hold(False)

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        return self.hold(True)


class OperationLock:
    """An exclusive flock on `<root>/tmp/<id>.op` held for the life of one operation."""

    def __init__(self, directory: pathlib.Path, id: str) -> None:
        self.path = directory / f"{id}.op"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = -1

    @staticmethod
    def abandoned(directory: pathlib.Path, id: str) -> bool:
        """True when no live process holds the operation lock of `id`."""
        path = directory / f"{id}.op"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True
