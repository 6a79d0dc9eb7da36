"""Changesets for drivers that cannot compute them natively (Docker's NaiveDiffDriver).

Mount the layer (and its parent), compare the two trees, and write or apply the
difference as a tar. Correct for every driver, and the reference that native fast
paths are tested against; slow in proportion to the size of the whole tree.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import BinaryIO

from cowstore import archive
from cowstore.archive.changes import Change
from cowstore.drivers.driver import Driver
from cowstore.host import fsutil

_SPOOL_BYTES = 32 * 1024 * 1024


class NaiveDiffDriver(Driver):
    """A Driver whose diff, changes, apply_diff and diff_size compare mounted trees."""

    def _spooled(self, write: Callable[[BinaryIO], None]) -> BinaryIO:
        """A private spool file that `write` fills, rewound; removed if `write` raises."""
        return fsutil.spooled(write, self.home, in_memory=_SPOOL_BYTES)

    def diff(self, id: str, parent: str | None = None) -> BinaryIO:
        return self._spooled(lambda out: self._write_diff(id, parent, None, out))

    def checked_diff(self, id: str, parent: str | None, check: Callable[[list[Change], int], None]) -> BinaryIO:
        """One pass for a commit: the changes are found once, checked, and written from the same mount.

        Only while diff and diff_size are this class's own, which write and measure
        exactly `changes`; a driver with its own diff or diff_size keeps the default.
        """
        if type(self).diff is not NaiveDiffDriver.diff or type(self).diff_size is not NaiveDiffDriver.diff_size:
            return super().checked_diff(id, parent, check)
        return self._spooled(lambda out: self._write_diff(id, parent, check, out))

    def _write_diff(
        self, id: str, parent: str | None, check: Callable[[list[Change], int], None] | None, out: BinaryIO
    ) -> None:
        """Write the diff of `id` to `out` from one mount of it; with `check`, check the changes first."""
        path = self.get(id)
        try:
            changes = self.changes(id, parent) if parent is not None or check is not None else []
            if check is not None:
                check(changes, archive.changes_size(path, changes))
            if parent is None:
                archive.tar_directory(path, out)
            else:
                archive.export_changes(path, changes, out)
        finally:
            self.put(id)

    def changes(self, id: str, parent: str | None = None) -> list[Change]:
        path = self.get(id)
        try:
            if parent is None:
                return archive.changes_dirs(path, None)
            parent_path = self.get(parent)
            try:
                return archive.changes_dirs(path, parent_path)
            finally:
                self.put(parent)
        finally:
            self.put(id)

    def apply_diff(self, id: str, parent: str | None, stream: BinaryIO) -> int:
        path = self.get(id)
        try:
            size = archive.apply_layer(stream, path, whiteouts="oci")
            self.settle(path)
            return size
        finally:
            self.put(id)

    def settle(self, path: pathlib.Path) -> None:  # noqa: B027 - only a driver with a filesystem per layer needs it
        """Make what apply_diff wrote below `path` durable, raising any write error (none to do here)."""

    def diff_size(self, id: str, parent: str | None = None) -> int:
        changes = self.changes(id, parent)
        path = self.get(id)
        try:
            return archive.changes_size(path, changes)
        finally:
            self.put(id)
