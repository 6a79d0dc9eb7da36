"""Metadata a layer entry may carry: what Linux can store, checked while the tar is read.

A tar header or PAX record can say anything (a 50-bit uid, NUL inside a link target, a
device number no kernel encodes, an mtime of 1e300); without these checks each reached
a system call and came back as a traceback from deep inside the applier.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cowstore.errors import ArchiveError

if TYPE_CHECKING:
    from cowstore.archive.tarstream import TarEntry

_MAX_ID = 2**32 - 2  # uid_t/gid_t; 2**32 - 1 is (uid_t)-1, "leave unchanged" to chown(2)
_MAX_MAJOR = 2**12 - 1  # the kernel's dev_t: 12 bits of major, 20 of minor
_MAX_MINOR = 2**20 - 1
_MAX_SECONDS = 2**62  # utimensat takes a signed 64-bit tv_sec (filesystems clamp further)


def check_entry(entry: TarEntry) -> None:
    """Raise ArchiveError naming the entry if its metadata cannot exist on Linux."""
    for what, value in (("uid", entry.uid), ("gid", entry.gid)):
        if not 0 <= value <= _MAX_ID:
            raise ArchiveError(f"{what} {value} is out of range", entry.name)
    if "\0" in entry.name or "\0" in entry.linkname:
        raise ArchiveError("NUL byte in a name or link target", entry.name)
    for name in entry.xattrs:
        if not name:
            raise ArchiveError("empty xattr name", entry.name)
        if "\0" in name:
            raise ArchiveError("NUL byte in an xattr name", entry.name)
    if not (0 <= entry.devmajor <= _MAX_MAJOR and 0 <= entry.devminor <= _MAX_MINOR):
        raise ArchiveError(f"device number {entry.devmajor}:{entry.devminor} is out of range", entry.name)
    if not -_MAX_SECONDS <= entry.mtime <= _MAX_SECONDS:
        raise ArchiveError(f"mtime {entry.mtime} is out of range", entry.name)
