"""A filesystem made for one bench run: a sparse image file, formatted, on a loop device, mounted.

The scratch space's common ext4 is one; the baselines are others (ext4 on a plain loop
device as Docker's loop-lvm had it, a plain btrfs, an xfs with reflink). The loop device
is attached by ioctl with autoclear (`cowstore.host.loop`), so it detaches itself when
the mount goes: a crash between attach and mount, or an unmount by anyone, cannot leak
it. mkfs formats the image file itself, before any device exists.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
from collections.abc import Sequence

from cowstore.errors import CowstoreError, MountError, NotSupported
from cowstore.host import loop, mounts

# Inode tables and journal written now, not by a background thread during the measurements.
EXT4 = ("mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0")
BTRFS = ("mkfs.btrfs", "-q", "-f")
XFS_REFLINK = ("mkfs.xfs", "-q", "-f", "-m", "reflink=1")
_FSTYPE = {"mkfs.ext4": "ext4", "mkfs.btrfs": "btrfs", "mkfs.xfs": "xfs"}


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no output"


class LoopFilesystem:
    """A new filesystem of `size` bytes (sparse) in `image`, mounted on `mountpoint` until close()."""

    def __init__(
        self,
        image: pathlib.Path,
        mountpoint: pathlib.Path,
        size: int,
        mkfs: Sequence[str] = EXT4,
        *,
        direct_io: bool = False,
    ) -> None:
        if shutil.which(mkfs[0]) is None:
            raise NotSupported(f"{mkfs[0]} is not installed")
        self.image, self.mountpoint = image, mountpoint
        self.fstype = _FSTYPE[mkfs[0]]
        self.direct_io = direct_io
        self.mounted = False
        with open(image, "wb") as fh:
            fh.truncate(size)
        try:
            result = subprocess.run([*mkfs, str(image)], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise MountError(f"{mkfs[0]} {image} failed: {_last_line(result.stderr or result.stdout)}")
            mountpoint.mkdir(exist_ok=True)
            with loop.attached(image, direct_io=direct_io) as device:
                mounts.mount(device, mountpoint, self.fstype, mounts.MS_NOATIME)
            self.mounted = True
        except BaseException:
            self.close()
            raise

    def describe(self) -> str:
        io = ", direct I/O" if self.direct_io else ""
        return f"{self.fstype} on a loop device{io} over a sparse file of {self.image.stat().st_size // 2**20} MiB"

    def close(self) -> None:
        """Unmount (lazily if busy: the device then goes with its last user) and delete the image."""
        if self.mounted:
            try:
                mounts.umount(self.mountpoint, 0)
            except CowstoreError:
                mounts.umount(self.mountpoint)
            self.mounted = False
            loop.detach(self.image)
        self.image.unlink(missing_ok=True)
