"""Bounds on the outer archive of `load` (the docker-save or OCI tar around the layers).

Layers are bounded by the layer store's Limits; the archive that carries them must be too,
or a 1 MB .tar.gz inflating to a gigabyte fills the disk while it is spooled, and one
200 MiB PAX header is held in memory by the tar parser. So the spool stops before the
disk is fuller than `min-free-disk`, and before any header is parsed a scan of the
spooled archive checks every header against the same limits: extended headers (PAX,
GNU long names) no larger than `max-extended-header`, no more than `max-entries`
members, and no sparse members (docker save and OCI writers never make them; their
malformed variants crash the parser).
"""

from __future__ import annotations

import os
import tarfile
from typing import BinaryIO

from cowstore.archive import Limits
from cowstore.archive.tarstream import parse_pax
from cowstore.digest import Reader
from cowstore.errors import ArchiveError, StagingSpaceExhausted
from cowstore.images.errors import BadImageArchive

_CHUNK = 1024 * 1024
_CHECK_EVERY = 16 * _CHUNK
_EXTENDED = (b"x", b"g", b"L", b"K")


def _check_free(spool: BinaryIO, limits: Limits, what: str) -> None:
    fs = os.fstatvfs(spool.fileno())
    if fs.f_bavail * fs.f_frsize < limits.min_free_disk:
        raise StagingSpaceExhausted(
            f"stopped reading {what}: less than {limits.min_free_disk} bytes free where it is spooled "
            "(--limit min-free-disk)"
        )


def spool(plain: Reader, out: BinaryIO, limits: Limits, what: str) -> None:
    """Copy the decompressed archive into `out`, stopping before the disk gets fuller than allowed."""
    _check_free(out, limits, what)
    since_check = 0
    while chunk := plain.read(_CHUNK):
        out.write(chunk)
        since_check += len(chunk)
        if since_check >= _CHECK_EVERY:
            out.flush()
            _check_free(out, limits, what)
            since_check = 0
    out.flush()


def _size(block: bytes, what: str, offset: int) -> int:
    try:
        size = tarfile.nti(block[124:136])  # type: ignore[attr-defined]
    except (tarfile.InvalidHeaderError, ValueError):  # type: ignore[attr-defined]
        raise BadImageArchive(f"{what}: malformed tar header at offset {offset}") from None
    if size < 0:
        raise BadImageArchive(f"{what}: negative member size at offset {offset}")
    return int(size)


def scan(archive: BinaryIO, limits: Limits, what: str) -> None:
    """Check every header of a spooled tar against `limits` before tarfile parses any of it."""
    offset = 0
    entries = 0
    size_override: int | None = None
    while True:
        archive.seek(offset)
        block = archive.read(512)
        if len(block) < 512 or block == bytes(512):
            break  # the end, or a truncation tarfile reports
        kind = block[156:157]
        size = _size(block, what, offset)
        entries += 1
        if entries > limits.max_entries:
            raise BadImageArchive(f"{what}: more than {limits.max_entries} entries (--limit max-entries)")
        if kind == b"S":
            raise BadImageArchive(f"{what}: sparse member at offset {offset}; image archives have none")
        if kind in _EXTENDED:
            if size > limits.max_extended_header:
                raise BadImageArchive(
                    f"{what}: extended header of {size} bytes at offset {offset} is over the limit of "
                    f"{limits.max_extended_header} bytes (--limit max-extended-header)"
                )
            if kind == b"x":
                size_override = _pax_size(archive.read(size), what, offset)
        elif size_override is not None:
            size, size_override = size_override, None
        offset += 512 + (size + 511) // 512 * 512
    archive.seek(0)


def _pax_size(payload: bytes, what: str, offset: int) -> int | None:
    """The member size a PAX header sets (None when it sets none); sparse records are refused."""
    try:
        records = parse_pax(payload, f"offset {offset}")
    except ArchiveError as exc:
        raise BadImageArchive(f"{what}: {exc}") from None
    if any(key.startswith("GNU.sparse.") for key in records):
        raise BadImageArchive(f"{what}: sparse member at offset {offset}; image archives have none")
    if "size" not in records:
        return None
    value = records["size"]
    if not value.isdigit():
        raise BadImageArchive(f"{what}: malformed PAX size at offset {offset}")
    return int(value)
