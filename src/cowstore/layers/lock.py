"""Inter-process locks of a store: one shared/exclusive store lock, and per-operation locks.

The store lock guards short metadata transactions. Long work (extracting a layer,
copying a tree) runs outside it, under an operation lock named after the layer's driver
id: while the lock is held the operation is alive; a free lock on a record left in state
`creating` or `removing` means its process died, and the next opener finishes the job.
fcntl locks die with their process, so a crash can never leave a lock behind. Opening a
store takes neither lock unless an operation lock file says a process died mid-way.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
import time
from collections.abc import Callable, Iterator

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
    """An exclusive flock on `<root>/tmp/<id>.op` held for the life of one operation.

    The file appears already locked (it is locked before it is linked into the directory),
    and it is removed only once the operation's records are final, by its owner or by
    the recovery that finished its work. So an `.op` file whose lock is free always
    means an interrupted operation, and no `.op` file with a free lock means there is
    nothing to recover: that is the cheap marker every store open looks at.
    """

    @classmethod
    def announce(cls, directory: pathlib.Path, id: str, record: Callable[[], None]) -> OperationLock:
        """Take the operation lock of `id`, then `record` the operation in state `creating`.

        In that order: a record whose lock is free is what a dead process left behind.
        """
        op = cls(directory, id)
        try:
            record()
        except BaseException:
            op.release()
            raise
        return op

    def __init__(self, directory: pathlib.Path, id: str) -> None:
        self.path = directory / f"{id}{_SUFFIX}"
        dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                self._fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR):
                    raise
                self._named(directory, id)
                return
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                self._link(dir_fd)
            except BaseException:
                os.close(self._fd)
                raise
        finally:
            os.close(dir_fd)

    def _link(self, dir_fd: int) -> None:
        """Name the locked file; a free marker already by that name is taken over.

        A power loss can keep the marker of an operation that had finished (its unlink
        never reached the disk), and recovery, under the store lock, may start a new
        operation on the same id (a layer it collects) before it clears such markers:
        the dead process's marker means nothing the records do not say.
        """
        source = f"/proc/self/fd/{self._fd}"
        try:
            os.link(source, self.path.name, dst_dir_fd=dir_fd, follow_symlinks=True)
        except FileExistsError:
            if not _free(self.path):
                raise
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path.name, dir_fd=dir_fd)
            os.link(source, self.path.name, dst_dir_fd=dir_fd, follow_symlinks=True)

    def _named(self, directory: pathlib.Path, id: str) -> None:
        """Where the filesystem has no O_TMPFILE: lock under a private name, then rename."""
        private = directory / f".{id}.{os.getpid()}{_NEW}"
        self._fd = os.open(private, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            os.rename(private, self.path)
        except BaseException:
            os.close(self._fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(private)
            raise

    def leave(self) -> None:
        """Give up the lock but keep its file: the marker that makes the next opener's
        recovery finish what this process could not undo (a full disk, say)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = -1

    @staticmethod
    def abandoned(directory: pathlib.Path, id: str) -> bool:
        """True when no live process holds the operation lock of `id` (its file stays: see `clear`)."""
        return _free(directory / f"{id}{_SUFFIX}")

    @staticmethod
    def clear(directory: pathlib.Path, id: str) -> None:
        """Remove the lock file of an abandoned operation, once its records are final."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / f"{id}{_SUFFIX}")

    @staticmethod
    def interrupted(directory: pathlib.Path) -> list[str]:
        """Ids of the operations whose process died before finishing (no store lock needed)."""
        found = []
        with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(_SUFFIX) and _free(pathlib.Path(entry.path)):
                    found.append(entry.name.removesuffix(_SUFFIX))
        return found

    @staticmethod
    def sweep_private(directory: pathlib.Path) -> None:
        """Remove lock files that a process died holding before it could name them."""
        with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(_NEW) and _free(pathlib.Path(entry.path)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)


_SUFFIX = ".op"
_NEW = ".op-new"


def _free(path: pathlib.Path) -> bool:
    """Whether nobody holds the flock of `path` (a missing file is free)."""
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
    return True
