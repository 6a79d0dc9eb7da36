"""A strict, streaming tar reader that sees every byte of the archive.

`tarfile` is used only to decode single 512-byte headers. Extended headers (PAX, GNU
long names) are parsed here, with limits, and with the rules that remove the parser
differentials behind tar "file smuggling": a PAX size must agree with a non-zero ustar
size, header-only entry types carry no payload, a PAX header may not precede a GNU
long-name header, and only zeros may follow the end-of-archive marker. Each raw byte
that is not file payload is reported to an optional callback, which is what lets the
layer store reassemble the original tar byte for byte (tar-split).
"""

from __future__ import annotations

import math
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from cowstore.archive.entrycheck import check_entry
from cowstore.errors import ArchiveError, InvalidOption

BLOCK = 512

REGULAR = "file"
DIRECTORY = "dir"
SYMLINK = "symlink"
HARDLINK = "hardlink"
CHARDEV = "chardev"
BLOCKDEV = "blockdev"
FIFO = "fifo"

_TYPES = {
    tarfile.REGTYPE: REGULAR,
    tarfile.AREGTYPE: REGULAR,
    tarfile.CONTTYPE: REGULAR,
    tarfile.DIRTYPE: DIRECTORY,
    tarfile.SYMTYPE: SYMLINK,
    tarfile.LNKTYPE: HARDLINK,
    tarfile.CHRTYPE: CHARDEV,
    tarfile.BLKTYPE: BLOCKDEV,
    tarfile.FIFOTYPE: FIFO,
}
_HEADER_ONLY = {DIRECTORY, SYMLINK, HARDLINK, CHARDEV, BLOCKDEV, FIFO}


@dataclass(frozen=True)
class Limits:
    """Bounds that keep a hostile layer from exhausting memory, disk or time."""

    max_entries: int = 2_000_000
    max_bytes: int = 256 * 1024**3  # uncompressed payload of one layer
    max_name: int = 255  # one path component
    max_path: int = 4096
    max_extended_header: int = 1024 * 1024  # one PAX or GNU long-name payload
    max_xattr_bytes: int = 64 * 1024  # all xattrs of one entry
    min_free_disk: int = 512 * 1024**2  # staging a layer stops before the disk is this full

    @classmethod
    def parse(cls, items: dict[str, str]) -> Limits:
        """Limits from `--limit key=value` pairs (sizes like 10G; keys with dashes or underscores)."""
        from cowstore.units import parse_size

        values = {}
        for key, value in items.items():
            name = key.replace("-", "_")
            if name not in cls.__dataclass_fields__:
                known = ", ".join(k.replace("_", "-") for k in cls.__dataclass_fields__)
                raise InvalidOption(f"unknown limit {key!r} (known: {known})")
            values[name] = parse_size(value)
        return cls(**values)


@dataclass
class TarEntry:
    """One member of a layer tar, after extended headers were applied."""

    name: str  # as in the archive (str with surrogateescape for non-UTF-8 bytes)
    kind: str
    size: int
    mode: int
    uid: int
    gid: int
    mtime: float
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def parse_pax(payload: bytes, entry_name: str) -> dict[str, bytes]:
    """Parse PAX records `<len> <key>=<value>\\n` strictly (no zero or short lengths)."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(payload):
        space = payload.find(b" ", pos)
        if space < 0 or space == pos or not payload[pos:space].isdigit():
            raise ArchiveError("malformed PAX record", entry_name)
        length = int(payload[pos:space])
        end = pos + length
        if length <= space - pos + 1 or end > len(payload) or payload[end - 1 : end] != b"\n":
            raise ArchiveError("malformed PAX record length", entry_name)
        key, sep, value = payload[space + 1 : end - 1].partition(b"=")
        if not sep or not key:
            raise ArchiveError("malformed PAX record", entry_name)
        records[_decode(key)] = value
        pos = end
    return records


class TarReader:
    """Iterate over a tar stream; payload bytes must be read with `read_payload`.

    `on_segment(raw)` receives every byte that is not file payload (headers, extended
    headers, padding, end marker, trailing zeros) in stream order; `on_payload(entry,
    size)` is called before an entry's payload begins.
    """

    def __init__(
        self,
        stream: BinaryIO,
        limits: Limits | None = None,
        on_segment: Callable[[bytes], None] | None = None,
    ) -> None:
        self._stream = stream
        self.limits = limits or Limits()
        self._on_segment = on_segment
        self._pending_payload = 0
        self._pending_padding = 0
        self._current: TarEntry | None = None
        self.entries = 0
        self.payload_bytes = 0

    def _read_exact(self, n: int, what: str) -> bytes:
        chunks = []
        remaining = n
        while remaining:
            chunk = self._stream.read(remaining)
            if not chunk:
                raise ArchiveError(f"truncated archive while reading {what}")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _segment(self, raw: bytes) -> None:
        if self._on_segment is not None and raw:
            self._on_segment(raw)

    def read_payload(self, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """Yield the current entry's payload; must be exhausted before the next entry."""
        name = self._current.name if self._current else None
        while self._pending_payload:
            want = min(chunk_size, self._pending_payload)
            chunk = self._stream.read(want)
            if not chunk:
                raise ArchiveError("truncated archive in file data", name)
            self._pending_payload -= len(chunk)
            yield chunk

    def _finish_entry(self) -> None:
        for _ in self.read_payload():
            pass
        if self._pending_padding:
            self._segment(self._read_exact(self._pending_padding, "padding"))
            self._pending_padding = 0
        self._current = None

    def _read_extended(self, size: int, what: str) -> bytes:
        if size < 0 or size > self.limits.max_extended_header:
            raise ArchiveError(f"{what} of {size} bytes exceeds the limit")
        padded = -(-size // BLOCK) * BLOCK
        raw = self._read_exact(padded, what)
        self._segment(raw)
        return raw[:size]

    def __iter__(self) -> Iterator[TarEntry]:
        while True:
            self._finish_entry()
            entry = self._next_header()
            if entry is None:
                return
            self.entries += 1
            if self.entries > self.limits.max_entries:
                raise ArchiveError(f"more than {self.limits.max_entries} entries in one layer", entry.name)
            self.payload_bytes += entry.size
            if self.payload_bytes > self.limits.max_bytes:
                raise ArchiveError(f"layer larger than the limit of {self.limits.max_bytes} bytes", entry.name)
            self._current = entry
            self._pending_payload = entry.size
            self._pending_padding = -entry.size % BLOCK
            yield entry

    def _next_header(self) -> TarEntry | None:
        pax: dict[str, bytes] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        seen_pax = False
        while True:
            raw = self._stream.read(BLOCK)
            if not raw:
                return None  # EOF on a header boundary: accepted, like Go's reader
            if len(raw) < BLOCK:
                raw += self._read_exact(BLOCK - len(raw), "header")
            if raw == bytes(BLOCK):
                self._segment(raw)
                if seen_pax or long_name is not None or long_link is not None:
                    raise ArchiveError("extended header not followed by an entry")
                self._drain_trailer()
                return None
            self._segment(raw)
            try:
                info = tarfile.TarInfo.frombuf(raw, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise ArchiveError(f"not a valid tar header ({exc})") from None
            if info.size < 0:
                raise ArchiveError("negative entry size", info.name)
            if info.type == tarfile.XHDTYPE:
                if seen_pax or long_name is not None or long_link is not None:
                    raise ArchiveError("ambiguous chain of extended headers", info.name)
                pax = parse_pax(self._read_extended(info.size, "PAX header"), info.name)
                seen_pax = True
                continue
            if info.type == tarfile.XGLTYPE:
                self._read_extended(info.size, "PAX global header")
                continue
            if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
                if seen_pax:
                    raise ArchiveError("PAX header before a GNU long-name header is ambiguous", info.name)
                value = self._read_extended(info.size, "GNU long name").split(b"\0", 1)[0]
                if info.type == tarfile.GNUTYPE_LONGNAME:
                    if long_name is not None:
                        raise ArchiveError("repeated GNU long-name headers")
                    long_name = value
                else:
                    if long_link is not None:
                        raise ArchiveError("repeated GNU long-link headers")
                    long_link = value
                continue
            return self._make_entry(info, raw, pax, long_name, long_link)

    def _make_entry(
        self,
        info: tarfile.TarInfo,
        raw: bytes,
        pax: dict[str, bytes],
        long_name: bytes | None,
        long_link: bytes | None,
    ) -> TarEntry:
        name = info.name
        if long_name is not None:
            name = _decode(long_name)
        if "path" in pax:
            name = _decode(pax["path"])
        kind = _TYPES.get(info.type)
        if kind is None:
            raise ArchiveError(f"unsupported tar entry type {info.type!r}", name)
        size = info.size
        if "size" in pax:
            if not pax["size"].isdigit():
                raise ArchiveError("malformed PAX size", name)
            pax_size = int(pax["size"])
            if size not in (0, pax_size):
                raise ArchiveError("PAX size disagrees with the header size", name)
            size = pax_size
        if kind in _HEADER_ONLY and size != 0:
            raise ArchiveError(f"{kind} entry with a payload is ambiguous", name)
        if kind == REGULAR and (info.type == tarfile.AREGTYPE and name.endswith("/")):
            kind = DIRECTORY
        linkname = info.linkname
        if long_link is not None:
            linkname = _decode(long_link)
        if "linkpath" in pax:
            linkname = _decode(pax["linkpath"])
        xattrs: dict[str, bytes] = {}
        xattr_bytes = 0
        for key, value in pax.items():
            if key.startswith("SCHILY.xattr."):
                xattr_name = key[len("SCHILY.xattr.") :]
                xattrs[xattr_name] = value
                xattr_bytes += len(xattr_name) + len(value)
            elif key.startswith("GNU.sparse."):
                raise ArchiveError("sparse tar entries are not supported", name)
        if xattr_bytes > self.limits.max_xattr_bytes:
            raise ArchiveError(f"more than {self.limits.max_xattr_bytes} bytes of xattrs", name)
        mtime = float(info.mtime)
        if "mtime" in pax:
            try:
                mtime = float(pax["mtime"])
            except ValueError:
                raise ArchiveError("malformed PAX mtime", name) from None
            if not math.isfinite(mtime):
                raise ArchiveError("malformed PAX mtime", name)
        uid = _pax_int(pax, "uid", info.uid, name)
        gid = _pax_int(pax, "gid", info.gid, name)
        entry = TarEntry(
            name=name,
            kind=kind,
            size=size if kind == REGULAR else 0,
            mode=info.mode & 0o7777,
            uid=uid,
            gid=gid,
            mtime=mtime,
            linkname=linkname,
            devmajor=info.devmajor,
            devminor=info.devminor,
            xattrs=xattrs,
        )
        check_entry(entry)
        return entry

    def _drain_trailer(self) -> None:
        """After the first zero block only zeros may follow (the rest of the marker, padding)."""
        while True:
            chunk = self._stream.read(64 * 1024)
            if not chunk:
                return
            if chunk.count(0) != len(chunk):
                raise ArchiveError("data after the end-of-archive marker")
            self._segment(chunk)


def _pax_int(pax: dict[str, bytes], key: str, default: int, name: str) -> int:
    if key not in pax:
        return default
    if not pax[key].isdigit():
        raise ArchiveError(f"malformed PAX {key}", name)
    return int(pax[key])
