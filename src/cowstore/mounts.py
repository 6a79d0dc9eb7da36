"""Kernel mount plumbing: mount(2)/umount2(2) through ctypes and the mount table.

Drivers mount and unmount often, on hot paths; calling the syscalls directly avoids a
`mount` process per operation and gives the errno back for a useful message.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import pathlib
import re

from cowstore.errors import MountError

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_FORCE = 0x1
MNT_DETACH = 0x2

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def libc() -> ctypes.CDLL:
    """The C library handle, for modules that need further syscalls."""
    return _libc


def mount(source: str, target: str | os.PathLike, fstype: str, flags: int = 0, data: str | bytes | None = None) -> None:
    """mount(2); raises MountError naming the target and the errno."""
    if isinstance(data, str):
        data = data.encode()
    rc = _libc.mount(source.encode(), os.fsencode(target), fstype.encode() if fstype else None, flags, data)
    if rc != 0:
        err = ctypes.get_errno()
        raise MountError(f"mount {fstype or 'bind'} on {target}: {os.strerror(err)}")


def umount(target: str | os.PathLike, flags: int = MNT_DETACH) -> None:
    """umount2(2); a target that is not mounted is not an error."""
    rc = _libc.umount2(os.fsencode(target), flags)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return
        raise MountError(f"unmount {target}: {os.strerror(err)}")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal; names may be any bytes."""
    raw = field.encode("utf-8", "surrogateescape")
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), raw).decode("utf-8", "surrogateescape")


def mount_table() -> list[tuple[str, str, str]]:
    """(mount point, fstype, source) of every mount in this mount namespace."""
    rows = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            fields = line.split()
            sep = fields.index("-")
            rows.append((_unescape(fields[4]), fields[sep + 1], _unescape(fields[sep + 2])))
    return rows


def is_mountpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is the target of a mount (by the mount table, not by st_dev)."""
    target = os.path.realpath(path)
    return any(point == target for point, _, _ in mount_table())


def mounts_under(path: str | os.PathLike) -> list[str]:
    """Mount points at or below `path`, deepest first, so they can be unmounted in order."""
    base = os.path.realpath(path)
    found = [p for p, _, _ in mount_table() if p == base or p.startswith(base.rstrip("/") + "/")]
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_all(path: str | os.PathLike) -> None:
    """Unmount every mount at or below `path` (driver cleanup)."""
    for point in mounts_under(path):
        umount(point, MNT_DETACH)


def fstype_of(path: str | os.PathLike) -> str:
    """The filesystem type name of the mount holding `path`."""
    target = pathlib.Path(os.path.realpath(path))
    table = {point: fstype for point, fstype, _ in mount_table()}
    for candidate in (target, *target.parents):
        if str(candidate) in table:
            return table[str(candidate)]
    return "<unknown>"
