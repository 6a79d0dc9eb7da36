"""Changesets for drivers that cannot compute them natively (Docker's NaiveDiffDriver).

Mount the layer (and its parent), compare the two trees, and write or apply the
difference as a tar. Correct for every driver, and the reference that native fast
paths are tested against; slow in proportion to the size of the whole tree.
"""

from __future__ import annotations

import pathlib
import tempfile
from typing import BinaryIO, cast

from cowstore import archive
from cowstore.archive.changes import Change
from cowstore.drivers.driver import Driver

_SPOOL_BYTES = 32 * 1024 * 1024


class NaiveDiffDriver(Driver):
    """A Driver whose diff, changes, apply_diff and diff_size compare mounted trees."""

    def _spool(self) -> BinaryIO:
        return cast(BinaryIO, tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES, dir=str(self.home)))

    def diff(self, id: str, parent: str | None = None) -> BinaryIO:
        out = self._spool()
        try:
            path = self.get(id)
            try:
                if parent is None:
                    archive.tar_directory(path, out)
                else:
                    archive.export_changes(path, self.changes(id, parent), out)
            finally:
                self.put(id)
        except BaseException:
            out.close()
            raise
        out.seek(0)
        return out

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
