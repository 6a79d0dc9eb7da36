"""The bench's scratch space: a temp dir holding a loop-mounted ext4 image, undone on any exit.

Every driver and peer keeps its store on the same freshly made ext4, so they compare on
equal terms: the host's root filesystem can be several times slower for small files
than a loop-mounted image of the same disk, and it carries other workers' dirty data.
Nothing is kept: the user's store is never touched, and on exit (normal, exception,
Ctrl-C or SIGTERM) every mount under the scratch dir is undone, the image's loop device
detaches itself (it is attached with autoclear) and the dir is deleted.
"""

from __future__ import annotations

import contextlib
import pathlib
import signal
import tempfile
from collections.abc import Iterator
from types import FrameType
from typing import Self

from cowstore.app.bench.loopfs import LoopFilesystem
from cowstore.errors import CowstoreError
from cowstore.host import fsutil, mounts

_TERMINATING = (signal.SIGTERM, signal.SIGHUP)


class Scratch:
    """Scratch directories for one bench run, on a common ext4 backing when possible."""

    def __init__(self, size: int, parent: pathlib.Path | None = None) -> None:
        self.size = size
        self.parent = parent
        self.base = pathlib.Path()
        self.root = pathlib.Path()
        self.backing = "unset"
        self.filesystem: LoopFilesystem | None = None
        self._counter = 0

    def __enter__(self) -> Self:
        self.base = pathlib.Path(tempfile.mkdtemp(prefix="cowstore-bench-", dir=self.parent or "/var/tmp"))
        try:
            self.root = self.base / "backing"
            self.root.mkdir()
            self.backing = self._mount_ext4()
        except BaseException:
            fsutil.remove_tree(self.base)
            raise
        return self

    def _mount_ext4(self) -> str:
        """Mount a sparse ext4 image on `root`; fall back to the plain dir, saying why."""
        try:
            self.filesystem = LoopFilesystem(self.base / "backing.ext4", self.root, self.size)
        except (CowstoreError, OSError) as exc:
            return f"plain directory on {fsutil.backing_fs(self.root)} (no loop-mounted ext4: {exc})"
        return f"loop-mounted ext4 image of {self.size // 2**30} GiB ({self.filesystem.image})"

    @property
    def image(self) -> pathlib.Path | None:
        """The file behind the common backing, if it is one: its pages hold a second copy of
        everything read or written on the backing, so a cold read must evict it too."""
        return self.filesystem.image if self.filesystem is not None else None

    def path(self, name: str) -> pathlib.Path:
        """A new, empty directory on the common backing, unique within the run."""
        self._counter += 1
        path = self.root / f"{name}-{self._counter}"
        path.mkdir()
        return path

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Undo every mount below the scratch dir (deepest first), then delete it."""
        if not self.base.parts:
            return
        for point in mounts.mounts_under(self.base):
            try:
                mounts.umount(point, 0)
            except CowstoreError:
                mounts.umount(point)
        if self.filesystem is not None:
            self.filesystem.close()
        fsutil.remove_tree(self.base)


@contextlib.contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt, so cleanup runs as on Ctrl-C."""

    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, raise_interrupt) for sig in _TERMINATING}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
