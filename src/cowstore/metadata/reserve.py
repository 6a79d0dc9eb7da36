"""The store's reserve: 1 MiB it keeps beside its database and gives back to a full disk.

A full disk must not lock the store. Opening a WAL database creates its shared-memory
index (`-shm`), which needs a few blocks, and every write appends to the `-wal`; with
not one block free, even `cowstore images` could not open the store, and neither could
`rm` or `rmi`, the very commands that free space. So the store keeps this file, like
the blocks ext4 reserves for root, deletes it when SQLite finds the disk full, and makes
it again once the disk has room.
"""

from __future__ import annotations

import errno
import os
import pathlib
import sqlite3

from cowstore.errors import NoSpace
from cowstore.host.fsutil import syncfs

RESERVE_FILE = "cowstore.reserve"
RESERVE_BYTES = 1024 * 1024
_REFILL_FREE = 64 * 1024 * 1024  # made again once this much is free
_LOW_FREE = 4 * 1024 * 1024  # given up before SQLite's next step once less than this is free
_PROBE_BYTES = 64 * 1024
_SQLITE_IOERR = 10
_SQLITE_FULL = 13


class Reserve:
    """The reserve file of the store whose database lives in `directory`."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.path = directory / RESERVE_FILE

    def free(self) -> int:
        st = os.statvfs(self.directory)
        return st.f_bfree * st.f_frsize

    def disk_full(self, exc: sqlite3.Error) -> bool:
        """Whether SQLite failed for want of space.

        SQLite reports a full disk as SQLITE_FULL only when growing the database or its
        journal; growing the WAL index fails as an I/O error, and no errno comes with it.
        So an I/O error counts when the directory cannot take a small file right now
        (free-block counts would not tell: ext4 keeps some blocks back even from root).
        """
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == _SQLITE_FULL:
            return True
        if code != _SQLITE_IOERR:
            return False
        probe = self.directory / f".{RESERVE_FILE}-probe-{os.getpid()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as err:
            return err.errno in (errno.ENOSPC, errno.EDQUOT)
        try:
            os.posix_fallocate(fd, 0, _PROBE_BYTES)
        except OSError as err:
            return err.errno in (errno.ENOSPC, errno.EDQUOT)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
        return False

    def error(self, exc: sqlite3.Error) -> Exception:
        """NoSpace for a full disk, else the SQLite error itself."""
        if self.disk_full(exc):
            return NoSpace(f"the store database cannot grow: no space left on device ({self.directory})")
        return exc

    def guard(self) -> None:
        """Give up the reserve before SQLite's next step when the disk is (nearly) full.

        SQLite writes into its shared-memory index through a mapping, and on btrfs a
        page of a mapping that finds no space is a SIGBUS, not an error SQLite could
        report: the room must be there before it looks. btrfs frees what a deleted file
        held at its next commit, hence the syncfs, on every step while the disk is
        nearly full: the reserve may be gone already, and the room a failed step freed
        (say, the layer a full disk stopped) must be there before the step that follows.
        """
        if self.free() < _LOW_FREE:
            self.release()
            syncfs(self.directory)  # also what a failed step just deleted (an abandoned layer)

    def release(self) -> bool:
        """Give the reserve to the full disk; False if it was gone already."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        return True

    def refill(self) -> None:
        """Make the reserve again when it is gone and the disk has room."""
        if self.path.exists() or self.free() < _REFILL_FREE:
            return
        tmp = self.directory / f".{RESERVE_FILE}-{os.getpid()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)
