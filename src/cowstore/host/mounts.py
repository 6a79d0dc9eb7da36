"""Kernel mount plumbing: mount(2)/umount2(2) through ctypes, and the one mountinfo parser.

Drivers mount and unmount often, on hot paths; calling the syscalls directly avoids a
`mount` process per operation and gives the errno back for a useful message.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pathlib
import re
from typing import NamedTuple

from cowstore.errors import MountError
from cowstore.host.libc import LIBC

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_FORCE = 0x1
MNT_DETACH = 0x2

_OCTAL = re.compile(rb"\\([0-7]{3})")


class Mount(NamedTuple):
    """One line of /proc/self/mountinfo, with the path fields unescaped."""

    target: str
    fstype: str
    source: str
    major: int
    minor: int


def mount(source: str, target: str | os.PathLike, fstype: str, flags: int = 0, data: str | bytes | None = None) -> None:
    """mount(2); raises MountError naming the target and the errno."""
    if isinstance(data, str):
        data = data.encode()
    rc = LIBC.mount(source.encode(), os.fsencode(target), fstype.encode() if fstype else None, flags, data)
    if rc != 0:
        err = ctypes.get_errno()
        raise MountError(f"mount {fstype or 'bind'} on {target}: {os.strerror(err)}")


def umount(target: str | os.PathLike, flags: int = MNT_DETACH) -> None:
    """umount2(2); a target that is not mounted is not an error."""
    rc = LIBC.umount2(os.fsencode(target), flags)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return
        raise MountError(f"unmount {target}: {os.strerror(err)}")


def _unescape(field: bytes) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal; names may be any bytes."""
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def _parse(line: bytes) -> Mount:
    fields = line.split()
    sep = fields.index(b"-")
    major, _, minor = fields[2].partition(b":")
    return Mount(_unescape(fields[4]), fields[sep + 1].decode(), _unescape(fields[sep + 2]), int(major), int(minor))


def _read_table() -> bytes:
    with open("/proc/self/mountinfo", "rb") as fh:
        return fh.read()


def mount_table() -> list[Mount]:
    """Every mount in this mount namespace, in mount order (the last of a target is on top).

    Reads the table only: it never stats a mount point, so a FUSE server may call it
    for its own mount before it answers requests.
    """
    return [_parse(line) for line in _read_table().splitlines()]


def _escape(path: str) -> bytes:
    """A path as mountinfo spells it (the reverse of `_unescape`)."""
    raw = os.fsencode(path)
    for char in b"\\ \t\n":
        raw = raw.replace(bytes([char]), b"\\%03o" % char)
    return raw


def find_mount(target: str | os.PathLike) -> Mount | None:
    """The topmost mount on exactly `target` (taken as given, never resolved through the mount).

    Searches the raw table for the path from its end, and parses only the lines that
    name it: on a host with thousands of mounts, parsing them all cost milliseconds on
    every mount and unmount.
    """
    wanted = os.path.abspath(target)
    needle = b" " + _escape(wanted) + b" "
    table = _read_table()
    end = len(table)
    while (found := table.rfind(needle, 0, end)) >= 0:
        start = table.rfind(b"\n", 0, found) + 1
        stop = table.find(b"\n", found)
        row = _parse(table[start : stop if stop >= 0 else len(table)])
        if row.target == wanted:
            return row
        end = found
    return None


def device_mount(path: str | os.PathLike) -> Mount | None:
    """`find_mount` of `path`, for a mount point that only ever holds a device's filesystem.

    Such a mount has another st_dev than the directory it covers: where two lstat calls
    show the same device as the parent's (and not the root), nothing is mounted and the
    table is not read, which costs some 15 ms on a host with a thousand mounts. Not for a
    path where a bind mount of the same filesystem may sit, nor one whose stat may wait
    on the caller (a FUSE server's own mount).
    """
    real = os.path.realpath(path)
    try:
        st, up = os.lstat(real), os.lstat(os.path.dirname(real))
    except FileNotFoundError:
        return None
    except OSError:
        return find_mount(real)  # something answers oddly there: the table says what
    if st.st_dev == up.st_dev and st.st_ino != up.st_ino:
        return None
    return find_mount(real)


def is_mountpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is the target of a mount (by the mount table, not by st_dev)."""
    return find_mount(os.path.realpath(path)) is not None


def mounts_under(path: str | os.PathLike) -> list[str]:
    """Mount points at or below `path`, deepest first, so they can be unmounted in order."""
    base = os.path.realpath(path)
    found = [row.target for row in mount_table() if row.target == base or row.target.startswith(base.rstrip("/") + "/")]
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_all(path: str | os.PathLike) -> None:
    """Unmount every mount at or below `path` (driver cleanup)."""
    for point in mounts_under(path):
        umount(point, MNT_DETACH)


def fstype_of(path: str | os.PathLike) -> str:
    """The filesystem type name of the mount holding `path`."""
    target = pathlib.Path(os.path.realpath(path))
    table = {row.target: row.fstype for row in mount_table()}
    for candidate in (target, *target.parents):
        if str(candidate) in table:
            return table[str(candidate)]
    return "<unknown>"
