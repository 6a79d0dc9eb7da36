"""The bench's scratch space: a temp dir holding a loop-mounted ext4 image, undone on any exit.

Every driver and peer keeps its store on the same freshly made ext4, so they compare on
equal terms: the host's root filesystem can be several times slower for small files
than a loop-mounted image of the same disk, and it carries other workers' dirty data.
Nothing is kept: the user's store is never touched, and on exit (normal, exception,
Ctrl-C or SIGTERM) every mount under the scratch dir is undone, the image's loop device
detaches itself (util-linux sets autoclear on `mount -o loop`) and the dir is deleted.
"""

from __future__ import annotations

import contextlib
import pathlib
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from types import FrameType
from typing import Self

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
        image = self.base / "backing.ext4"
        with open(image, "wb") as fh:
            fh.truncate(self.size)
        steps = (["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image)],
                 ["mount", "-o", "loop,noatime", "-t", "ext4", str(image), str(self.root)])
        for cmd in steps:
            try:
                result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            except FileNotFoundError:
                image.unlink()
                return f"plain directory on {fsutil.backing_fs(self.root)} ({cmd[0]} not found)"
            if result.returncode != 0:
                image.unlink()
                reason = (result.stderr or result.stdout).strip().splitlines()
                return f"plain directory on {fsutil.backing_fs(self.root)} ({cmd[0]} failed: {reason[-1] if reason else '?'})"
        return f"loop-mounted ext4 image of {self.size // 2**30} GiB ({image})"

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
