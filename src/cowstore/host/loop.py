"""Loop block devices, attached by ioctl with autoclear.

`attached(path)` gives a /dev/loopN for a file for as long as the caller holds it, and
after that for as long as something else (a mount, mkfs) holds the device: the kernel
detaches a device with LO_FLAGS_AUTOCLEAR on its last close. A crash between attach
and mount, or an unmount by hand, therefore never leaks a loop device. No `losetup`
process is involved, so an attach costs two ioctls.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import time
from collections.abc import Iterator

from cowstore.errors import MountError

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_GET_STATUS64 = 0x4C05
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16

# struct loop_config: fd, block_size, then struct loop_info64 (lo_flags at 52, lo_file_name at 56).
_CONFIG_SIZE = 304
_INFO = 8
_FLAGS = _INFO + 52
_FILE_NAME = _INFO + 56
_NAME_MAX = 63
_ATTACH_TRIES = 20
_INFO64_SIZE = 232  # struct loop_info64: lo_device and lo_inode come first


def _devices() -> list[str]:
    """Every loop device of the host in number order, with plain os calls: a host may have a
    hundred of them, and this runs on every devicemapper mount and unmount."""
    names = sorted((n for n in os.listdir("/sys/block") if n.startswith("loop")), key=lambda n: (len(n), n))
    return [f"/dev/{name}" for name in names]


def backing_file(device: str) -> str | None:
    """The file a loop device is attached to, as sysfs reports it (None when detached)."""
    try:
        fd = os.open(f"/sys/block/{os.path.basename(device)}/loop/backing_file", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.fsdecode(os.read(fd, 8192)).strip()
    except OSError:
        return None
    finally:
        os.close(fd)


def backing_identity(device: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file behind a loop device, as the kernel sees it now.

    None when the device is detached, or when its file no longer answers: a file
    served by a FUSE server that died fails every request, this one included.
    """
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = bytearray(_INFO64_SIZE)
        fcntl.ioctl(fd, LOOP_GET_STATUS64, info, True)
    except OSError:
        return None
    finally:
        os.close(fd)
    encoded, inode = struct.unpack_from("=QQ", info)
    # The kernel's new_encode_dev: minor bits 0-7 and 20-39, major bits 8-19.
    major = (encoded >> 8) & 0xFFF
    minor = (encoded & 0xFF) | ((encoded >> 12) & 0xFFF00)
    return os.makedev(major, minor), inode


def find(path: str | os.PathLike) -> str | None:
    """The loop device currently attached to the file `path`, if any.

    The name is not enough: a device attached to a file of a FUSE server that died
    still reports the path, which a new server now serves with a new file; only a
    device whose file is the very inode at `path` counts.
    """
    target = os.path.realpath(path)
    candidates = [device for device in _devices() if backing_file(device) == target]
    if not candidates:
        return None
    try:
        st = os.stat(target)
    except OSError:
        return None
    return next((d for d in candidates if backing_identity(d) == (st.st_dev, st.st_ino)), None)


def attached_below(directory: str | os.PathLike) -> list[str]:
    """Loop devices whose file lies below `directory`, alive or not (for a store's reset)."""
    base = os.path.realpath(directory).rstrip("/") + "/"
    return [device for device in _devices() if (backing_file(device) or "").startswith(base)]


def _configure(control: int, image_fd: int, path: str, flags: int) -> tuple[str, int] | None:
    """Attach `image_fd` to the next free device; None when another process took it first."""
    number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
    device = f"/dev/loop{number}"
    dev_fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    config = bytearray(_CONFIG_SIZE)
    struct.pack_into("=II", config, 0, image_fd, 0)
    struct.pack_into("=I", config, _FLAGS, flags)
    name = os.fsencode(path)[:_NAME_MAX]
    config[_FILE_NAME : _FILE_NAME + len(name)] = name
    try:
        fcntl.ioctl(dev_fd, LOOP_CONFIGURE, config)
    except OSError as exc:
        os.close(dev_fd)
        if exc.errno == errno.EBUSY:
            return None
        raise MountError(f"attach {path} to {device}: {exc.strerror}") from None
    return device, dev_fd


def _attach(path: str, *, direct_io: bool, read_only: bool, autoclear: bool = True) -> tuple[str, int]:
    flags = (
        (LO_FLAGS_AUTOCLEAR if autoclear else 0)
        | (LO_FLAGS_DIRECT_IO if direct_io else 0)
        | (LO_FLAGS_READ_ONLY if read_only else 0)
    )
    image_fd = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
    try:
        try:
            control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise MountError(f"attach {path}: /dev/loop-control: {exc.strerror} (modprobe loop)") from None
        try:
            for _ in range(_ATTACH_TRIES):
                attached = _configure(control, image_fd, path, flags)
                if attached is not None:
                    return attached
        finally:
            os.close(control)
    finally:
        os.close(image_fd)
    raise MountError(f"attach {path}: no free loop device after {_ATTACH_TRIES} tries")


@contextlib.contextmanager
def attached(
    path: str | os.PathLike, *, direct_io: bool = False, read_only: bool = False, reuse: bool = True
) -> Iterator[str]:
    """A loop device for `path` (an existing attachment is reused) held open in the block.

    Mount it, or hand it to mkfs, inside the block: the device stays attached after the
    block only while something else holds it. A caller that knows no device is attached
    to `path` passes `reuse=False` and skips the search, which reads every loop device
    of the host.
    """
    real = os.path.realpath(path)
    device = find(real) if reuse else None
    if device is not None:
        try:
            dev_fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            device = None
    if device is None:
        device, dev_fd = _attach(real, direct_io=direct_io, read_only=read_only)
    try:
        yield device
    finally:
        os.close(dev_fd)


def _set_autoclear(device: str, on: bool) -> None:
    """Switch LO_FLAGS_AUTOCLEAR of an attached device (one of the two flags LOOP_SET_STATUS64 may change)."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        info = bytearray(_INFO64_SIZE)
        fcntl.ioctl(fd, LOOP_GET_STATUS64, info)
        (flags,) = struct.unpack_from("=I", info, 52)
        struct.pack_into("=I", info, 52, (flags | LO_FLAGS_AUTOCLEAR) if on else (flags & ~LO_FLAGS_AUTOCLEAR))
        fcntl.ioctl(fd, LOOP_SET_STATUS64, info)
    finally:
        os.close(fd)


def keep_attached(path: str | os.PathLike, *, direct_io: bool = False) -> str:
    """A loop device for `path` that stays attached without any user, until `detach`.

    For a device another program mounts at a time of its choosing (containerd): an
    autoclear device could vanish, or be reused for another file, in between. An
    existing attachment is kept rather than doubled: two loop devices on one file
    would be two filesystems writing the same blocks.
    """
    real = os.path.realpath(path)
    device = find(real)
    if device is not None:
        try:
            _set_autoclear(device, False)
            if backing_file(device) == real:
                return device
        except OSError:
            pass  # detached meanwhile: attach afresh
    device, dev_fd = _attach(real, direct_io=direct_io, read_only=False, autoclear=False)
    os.close(dev_fd)
    return device


def detach(path: str | os.PathLike, *, wait: float = 5.0) -> None:
    """Detach the loop device of `path`, if one is attached, and wait until it has let go.

    Call it once the device's users are gone (unmounted): a device still in use is only
    marked to detach when its last user goes, and this waits `wait` seconds for that.
    """
    device = find(path)
    if device is not None:
        detach_device(device, wait=wait)


def detach_device(device: str, *, wait: float = 5.0) -> None:
    """Detach `device` (see `detach`), whatever file it is attached to."""
    target = backing_file(device)
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD)
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # ENXIO: detached meanwhile
            raise MountError(f"detach {device}: {exc.strerror}") from None
    finally:
        os.close(fd)
    deadline = time.monotonic() + wait
    while target is not None and backing_file(device) == target and time.monotonic() < deadline:
        time.sleep(0.01)
