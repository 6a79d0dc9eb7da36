"""The /dev/fuse character device: opening a connection, mounting it, backing files.

Mounting with mount(2) and `fd=` directly (instead of fusermount3) keeps the daemon
free of helper processes; we are root, so the setuid helper has nothing to add.
"""

from __future__ import annotations

import fcntl
import os
import stat

from cowstore.errors import MountError, NotSupported
from cowstore.host import mounts
from cowstore.host.fuse import protocol as proto

DEVICE = "/dev/fuse"
_CONNECTIONS = "/sys/fs/fuse/connections"


def open_device() -> int:
    """A new FUSE connection fd; NotSupported when the kernel has no FUSE."""
    try:
        return os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotSupported(f"{DEVICE} is missing: load the fuse module (modprobe fuse)") from None
    except PermissionError:
        raise NotSupported(f"{DEVICE} is not accessible: FUSE mounts need root here") from None


def mount_fd(fd: int, target: str | os.PathLike, *, fstype: str, source: str, options: str = "") -> None:
    """Attach connection `fd` at `target` (which must be a directory we own as root).

    `allow_other` lets every user (and container processes) use the mount and
    `default_permissions` makes the kernel check modes, so the server need not.
    """
    root_mode = stat.S_IFMT(os.stat(target).st_mode)
    data = f"fd={fd},rootmode={root_mode:o},user_id=0,group_id=0,allow_other,default_permissions"
    if options:
        data += "," + options
    mounts.mount(source, target, f"fuse.{fstype}", 0, data)


def unmount(target: str | os.PathLike) -> None:
    """Lazily detach a FUSE mount; the server then reads ENODEV and exits."""
    mounts.umount(target, mounts.MNT_DETACH)


def connection_id(target: str | os.PathLike) -> int:
    """The connection number under /sys/fs/fuse/connections (the mount's device minor).

    Read from the mount table and never resolved with stat/realpath: the server calls
    this before it serves requests, and touching its own mount point would deadlock.
    """
    found = mounts.find_mount(target)
    if found is None:
        raise MountError(f"{os.path.abspath(target)} is not mounted")
    return found.minor


def abort_connection(conn: int) -> None:
    """Abort a hung or orphaned connection: every pending and future request fails."""
    if not os.path.exists(_CONNECTIONS + "/" + str(conn)) and not mounts.is_mountpoint(_CONNECTIONS):
        try:
            mounts.mount("fusectl", _CONNECTIONS, "fusectl")
        except MountError:
            return
    try:
        with open(f"{_CONNECTIONS}/{conn}/abort", "w") as fh:
            fh.write("1")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise MountError(f"abort FUSE connection {conn}: {exc.strerror}") from None


def backing_open(dev_fd: int, file_fd: int) -> int:
    """Register `file_fd` as a passthrough backing file; returns its backing id."""
    arg = bytearray(proto.BACKING_MAP.pack(file_fd, 0, 0))  # mutable: ioctl then returns the int result
    return fcntl.ioctl(dev_fd, proto.DEV_IOC_BACKING_OPEN, arg, True)


def backing_close(dev_fd: int, backing_id: int) -> None:
    """Drop a backing id; files already opened with it keep their reference."""
    fcntl.ioctl(dev_fd, proto.DEV_IOC_BACKING_CLOSE, bytearray(backing_id.to_bytes(4, "little")), True)
