"""A btrfs filesystem in a sparse image file, loop-mounted on the driver home.

The btrfs driver needs its home on btrfs; hosts whose store root is ext4 get one the
way Docker's devicemapper got its pool: a sparse file beside the home, formatted with
`mkfs.btrfs`, attached to a loop device and mounted. Nothing is recorded besides the
image file itself, so opening the store after a reboot (no loop device, no mount)
simply attaches and mounts it again.

The loop device is attached with autoclear (`cowstore.host.loop`): it goes away with
its last user (the mount), so a crash between attach and mount, or a forgotten
unmount by hand, cannot leak a loop device.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import subprocess
from collections.abc import Iterator

from cowstore.errors import MountError
from cowstore.host import loop, mounts

# mkfs.btrfs refuses smaller devices (non-mixed block groups, DUP metadata).
MIN_IMAGE_SIZE = 128 * 1024 * 1024


def image_path(home: pathlib.Path) -> pathlib.Path:
    """Where the image of driver home `home` lives: beside it, in the store root."""
    return home.parent / f"{home.name}.img"


def mounted_device(home: pathlib.Path) -> str | None:
    """The source device of the btrfs mounted exactly on `home`, if one is."""
    target = os.path.realpath(home)
    for row in mounts.mount_table():
        if row.target == target and row.fstype == "btrfs":
            return row.source
    return None


def _make_image(image: pathlib.Path, size: int) -> None:
    if size < MIN_IMAGE_SIZE:
        raise MountError(f"btrfs.loopback size {size} is too small: use at least {MIN_IMAGE_SIZE // 2**20}M")
    partial = image.with_name(image.name + ".partial")
    with open(partial, "wb") as fh:
        fh.truncate(size)
    try:
        result = subprocess.run(
            ["mkfs.btrfs", "-q", "-f", "-L", "cowstore", str(partial)], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        partial.unlink()
        raise MountError("mkfs.btrfs not found: install btrfs-progs to use btrfs.loopback") from None
    if result.returncode != 0:
        partial.unlink()
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise MountError(f"mkfs.btrfs {image} failed: {lines[-1] if lines else result.returncode}")
    os.rename(partial, image)


@contextlib.contextmanager
def _image_lock(image: pathlib.Path) -> Iterator[None]:
    """Serialise set-up and tear-down between processes opening the same store."""
    lock = image.with_name(image.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure_mounted(home: pathlib.Path, size: int | None) -> pathlib.Path:
    """Mount the image of `home` on it, creating the image (of `size` bytes) if needed.

    Idempotent: an image already mounted on `home` is kept as it is. Returns the image path.
    """
    image = image_path(home)
    home.mkdir(mode=0o710, parents=True, exist_ok=True)
    with _image_lock(image):
        if mounted_device(home) is not None:
            return image
        if not image.exists():
            if size is None:
                raise MountError(f"{image} does not exist: give btrfs.loopback=SIZE to create it")
            if any(home.iterdir()):
                raise MountError(f"{home} is not empty: a loopback mount would hide its content")
            _make_image(image, size)
        with loop.attached(image) as device:
            mounts.mount(device, home, "btrfs", mounts.MS_NOATIME)
    return image


def unmount(home: pathlib.Path) -> None:
    """Unmount the image from `home` and make sure its loop device is detached.

    The unmount is not lazy: a lazily detached filesystem would stay alive on its loop
    device, and the next open would attach the same image twice.
    """
    image = image_path(home)
    with _image_lock(image):
        device = mounted_device(home)
        if device is not None:
            mounts.umount(home, 0)
        attached = loop.find(image)
        if attached is not None and mounted_device_of(attached) is None:
            loop.detach(image)


def mounted_device_of(device: str) -> str | None:
    """A mount point of `device`, if it is mounted anywhere."""
    for row in mounts.mount_table():
        if row.source == device:
            return row.target
    return None
