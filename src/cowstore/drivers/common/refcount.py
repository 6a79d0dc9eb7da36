"""Mount reference counts shared by every process that uses one driver home.

Docker keeps these counts in the daemon's memory; cowstore has no daemon, so each
layer's count lives in a small file that doubles as the per-id lock (flock). A count
is checked against reality on every change: a mount that exists with no count (left
by a crashed process) counts as one user, and a count whose mount is gone (reboot,
manual umount) starts again from zero.

The count is the file's size, not its content: a sparse file holds no data block, so
the lock of every layer costs an inode and no space. A driver may keep a few short
notes about a layer on the same file (extended attributes, which fit in the inode).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
from collections.abc import Iterator

_NOTE = "user.cowstore."


class RefCount:
    """The locked count of one id; valid only inside `MountRefs.locked`."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def value(self) -> int:
        written = os.pread(self._fd, 32, 0).strip(b"\0 ")
        if written:  # the fixed-width text count of older stores
            return int(written) if written.isdigit() else 0
        return os.fstat(self._fd).st_size

    def _store(self, value: int) -> int:
        os.ftruncate(self._fd, 0)
        os.ftruncate(self._fd, value)
        return value

    def increment(self, mounted: bool) -> int:
        """Add a user; returns the new count (1 means the caller must mount)."""
        current = self.value()
        if current == 0 and mounted:
            current = 1
        elif current > 0 and not mounted:
            current = 0
        return self._store(current + 1)

    def decrement(self, mounted: bool) -> int:
        """Drop a user; returns the new count (0 means the caller must unmount)."""
        current = self.value() if mounted else 0
        if mounted and current == 0:
            current = 1
        return self._store(max(current - 1, 0))

    def reset(self) -> None:
        self._store(0)

    def set(self, users: int) -> None:
        """Record `users` as they are: a mount re-established for its users keeps their count."""
        self._store(users)


class MountRefs:
    """Per-id locks and mount counts under `<home>/mountpoints/`."""

    def __init__(self, home: pathlib.Path) -> None:
        self.dir = home / "mountpoints"
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self, id: str) -> Iterator[RefCount]:
        """Serialise operations on `id` across threads and processes."""
        fd = os.open(self.dir / id, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield RefCount(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def try_locked(self, id: str) -> Iterator[RefCount | None]:
        """Like `locked`, but yields None at once when another process holds the lock.

        Start-up sweeps use it to leave alone what a live process is still building.
        """
        fd = os.open(self.dir / id, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            yield RefCount(fd)
        finally:
            os.close(fd)

    def note(self, id: str, key: str) -> str | None:
        """The note `key` kept about `id`, if any."""
        try:
            return os.getxattr(self.dir / id, f"{_NOTE}{key}").decode()
        except OSError as exc:
            if exc.errno in (errno.ENODATA, errno.ENOENT):
                return None
            raise

    def set_note(self, id: str, key: str, value: str) -> None:
        """Keep a short note about `id` (call with its lock held): it lives as long as the count."""
        os.setxattr(self.dir / id, f"{_NOTE}{key}", value.encode())

    def drop_note(self, id: str, key: str) -> None:
        with contextlib.suppress(OSError):
            os.removexattr(self.dir / id, f"{_NOTE}{key}")

    def forget(self, id: str) -> None:
        """Drop the count file of a removed layer."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.dir / id)
