"""A btrfs filesystem in a sparse image file, loop-mounted on the driver home.

The btrfs driver needs its home on btrfs; hosts whose store root is ext4 get one the
way Docker's devicemapper got its pool: a sparse file beside the home, formatted with
`mkfs.btrfs`, attached to a loop device and mounted. Nothing is recorded besides the
image file itself, so opening the store after a reboot (no loop device, no mount)
simply attaches and mounts it again.

Loop devices are attached with LO_FLAGS_AUTOCLEAR: the kernel detaches the device as
soon as its last user (the mount) goes away, so a crash between attach and mount, or a
forgotten unmount by hand, cannot leak a loop device.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
import struct
import subprocess
from collections.abc import Iterator

from cowstore import mounts
from cowstore.errors import MountError

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LOOP_CLR_FD = 0x4C01
LO_FLAGS_AUTOCLEAR = 4
MS_NOATIME = 0x400

# mkfs.btrfs refuses smaller devices (non-mixed block groups, DUP metadata).
MIN_IMAGE_SIZE = 128 * 1024 * 1024
_ATTACH_TRIES = 20


def image_path(home: pathlib.Path) -> pathlib.Path:
    """Where the image of driver home `home` lives: beside it, in the store root."""
    return home.parent / f"{home.name}.img"


def _backing_file(device: str) -> str | None:
    name = os.path.basename(device)
    try:
        return pathlib.Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
    except OSError:
        return None


def find_device(image: pathlib.Path) -> str | None:
    """The loop device that currently has `image` attached, if any."""
    target = os.path.realpath(image)
    for entry in sorted(pathlib.Path("/sys/block").glob("loop*")):
        device = f"/dev/{entry.name}"
        if _backing_file(device) == target:
            return device
    return None


def mounted_device(home: pathlib.Path) -> str | None:
    """The source device of the btrfs mounted exactly on `home`, if one is."""
    target = os.path.realpath(home)
    for point, fstype, source in mounts.mount_table():
        if point == target and fstype == "btrfs":
            return source
    return None


def _make_image(image: pathlib.Path, size: int) -> None:
    if size < MIN_IMAGE_SIZE:
        raise MountError(f"btrfs.loopback size {size} is too small: use at least {MIN_IMAGE_SIZE // 2**20}M")
    partial = image.with_name(image.name + ".partial")
    with open(partial, "wb") as fh:
        fh.truncate(size)
    try:
        result = subprocess.run(["mkfs.btrfs", "-q", "-f", "-L", "cowstore", str(partial)],
                                capture_output=True, text=True, check=False)
    except FileNotFoundError:
        partial.unlink()
        raise MountError("mkfs.btrfs not found: install btrfs-progs to use btrfs.loopback") from None
    if result.returncode != 0:
        partial.unlink()
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise MountError(f"mkfs.btrfs {image} failed: {lines[-1] if lines else result.returncode}")
    os.rename(partial, image)


def _attach(image: pathlib.Path) -> tuple[str, int]:
    """Attach `image` to a free loop device; (device path, open device fd).

    The device stays attached only while the fd (then the mount) holds it.
    """
    image_fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(_ATTACH_TRIES):
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                device = f"/dev/loop{number}"
                dev_fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
                config = bytearray(304)
                struct.pack_into("=II", config, 0, image_fd, 0)
                struct.pack_into("=I", config, 8 + 52, LO_FLAGS_AUTOCLEAR)
                name = os.fsencode(os.path.realpath(image))[:63]
                config[8 + 56 : 8 + 56 + len(name)] = name
                try:
                    fcntl.ioctl(dev_fd, LOOP_CONFIGURE, config)
                except OSError as exc:
                    os.close(dev_fd)
                    if exc.errno == errno.EBUSY:
                        continue  # another process took this device between the two calls
                    raise MountError(f"attach {image} to {device}: {exc.strerror}") from None
                return device, dev_fd
        finally:
            os.close(control)
    finally:
        os.close(image_fd)
    raise MountError(f"attach {image}: no free loop device after {_ATTACH_TRIES} tries")


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
        device = find_device(image)
        dev_fd = None
        if device is None:
            device, dev_fd = _attach(image)
        try:
            mounts.mount(device, home, "btrfs", MS_NOATIME)
        finally:
            if dev_fd is not None:
                os.close(dev_fd)
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
        attached = find_device(image)
        if attached is not None and mounted_device_of(attached) is None:
            fd = os.open(attached, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.ioctl(fd, LOOP_CLR_FD)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise MountError(f"detach {attached}: {exc.strerror}") from None
            finally:
                os.close(fd)


def mounted_device_of(device: str) -> str | None:
    """A mount point of `device`, if it is mounted anywhere."""
    for point, _, source in mounts.mount_table():
        if source == device:
            return point
    return None
