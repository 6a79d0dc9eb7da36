"""A strict, streaming tar reader that sees every byte of the archive.

`tarfile` is used only to decode single 512-byte headers. Extended headers (PAX, GNU
long names) are parsed here, with limits, and with the rules that remove the parser
differentials behind tar "file smuggling": a PAX size must agree with a non-zero ustar
size, header-only entry types carry no payload, a PAX header may not precede a GNU
long-name header, and only zeros may follow the end-of-archive marker. Each raw byte
that is not file payload, every entry and every payload chunk is reported to an optional
TarObserver as the tar streams by, which is what lets the layer store record the original
tar byte for byte (tar-split) while a driver extracts it, in one pass.
"""

from __future__ import annotations

import math
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from cowstore.archive.entrycheck import check_entry
from cowstore.archive.limits import Limits
from cowstore.errors import ArchiveError

if TYPE_CHECKING:
    from cowstore.digest import Reader
    from cowstore.host.safepath import Root

__all__ = ["Limits", "Observed", "TarEntry", "TarObserver", "TarReader"]

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


class TarEntry(NamedTuple):
    """One member of a layer tar, after extended headers were applied."""

    name: str  # as in the archive (str with surrogateescape for non-UTF-8 bytes)
    kind: str
    size: int
    mode: int
    uid: int
    gid: int
    mtime: float
    linkname: str
    devmajor: int
    devminor: int
    xattrs: dict[str, bytes]


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class Header:
    """The fields of one 512-byte header that the reader uses, as `tarfile.TarInfo` has them."""

    __slots__ = ("devmajor", "devminor", "gid", "linkname", "mode", "mtime", "name", "size", "type", "uid")

    def __init__(self, name: str, kind: bytes, size: int) -> None:
        self.name = name
        self.type = kind
        self.size = size
        self.mode = self.uid = self.gid = self.mtime = self.devmajor = self.devminor = 0
        self.linkname = ""


_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s8x32x32x8s8s155s12x")
# Octal fields that repeat from header to header (mode, ids, device numbers), decoded once.
_REPEATED: dict[bytes, int] = {}
_REPEATED_MAX = 4096


def _octal(field: bytes) -> int:
    """tarfile's `nti` for a plain octal field; anything else (base-256) raises ValueError."""
    return int(field.split(b"\0", 1)[0] or b"0", 8)


def _repeated_octal(field: bytes) -> int:
    value = _REPEATED.get(field)
    if value is None:
        value = _octal(field)
        if len(_REPEATED) < _REPEATED_MAX:
            _REPEATED[field] = value
    return value


def checksum_matches(raw: bytes, chksum: bytes) -> bool:
    """Whether the header's checksum field holds the unsigned sum of its bytes, the field
    counted as spaces.

    Adding 512 bytes one by one is most of a header's decoding time. A header of ASCII
    bytes sums to at most 512 * 127 = 65,024, below 65,521, the modulus of zlib's Adler-32,
    whose low half is 1 + the sum modulo 65,521: for such a header that half gives the
    sum exactly, and in C.
    """
    want = _octal(chksum) - 256 + sum(chksum)
    if raw.isascii():
        return zlib.adler32(raw) & 0xFFFF == want + 1
    return sum(raw) == want


def decode_header(raw: bytes) -> Header | tarfile.TarInfo:
    """Decode one header block exactly as `tarfile.TarInfo.frombuf` does, several times faster.

    Headers the fast decoding does not cover (base-256 numbers, a checksum that only
    the signed sum matches, old GNU sparse entries) or that it finds malformed are
    decoded by `frombuf` itself, which also words the error.
    """
    try:
        header = _fast_header(raw)
    except (ValueError, UnicodeDecodeError):
        header = None
    if header is not None:
        return header
    try:
        return tarfile.TarInfo.frombuf(raw, "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        raise ArchiveError(f"not a valid tar header ({exc})") from None


def _fast_header(raw: bytes) -> Header | None:
    name, mode, uid, gid, size, mtime, chksum, kind, link, major, minor, prefix = _USTAR.unpack(raw)
    if not checksum_matches(raw, chksum) or kind == tarfile.GNUTYPE_SPARSE:
        return None
    text = _decode(name.split(b"\0", 1)[0])
    header = Header(text, kind, _octal(size))
    header.mode, header.uid, header.gid = _repeated_octal(mode), _repeated_octal(uid), _repeated_octal(gid)
    header.mtime = _octal(mtime)
    header.devmajor, header.devminor = _repeated_octal(major), _repeated_octal(minor)
    if link[0]:
        header.linkname = _decode(link.split(b"\0", 1)[0])
    if kind == tarfile.AREGTYPE and text.endswith("/"):
        header.type = tarfile.DIRTYPE
    if header.type == tarfile.DIRTYPE:
        header.name = text.rstrip("/")
    if prefix[0] and header.type not in tarfile.GNU_TYPES:
        before = _decode(prefix.split(b"\0", 1)[0])
        header.name = f"{before}/{header.name}"
    return header


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


class TarObserver:
    """Sees a layer tar as it is read: every byte, each in one of three roles, in stream order.

    `segment` gets what is not file payload (headers, extended headers, padding, the end
    marker, trailing zeros), `entry` each entry once its headers are parsed (before its
    payload and before it is applied), `payload` the entry's payload in chunks. `start`
    gets the root the tar is extracted into, if it is extracted (see `Observed`).
    """

    def start(self, root: Root) -> None:
        """The tar is about to be extracted into `root`."""

    def segment(self, raw: bytes) -> None:
        """Bytes that are not file payload."""

    def entry(self, entry: TarEntry) -> None:
        """An entry whose payload (if any) follows."""

    def payload(self, chunk: bytes | memoryview) -> None:
        """The next chunk of the current entry's payload (bytes or a memoryview of bytes)."""


class Observed:
    """A layer tar stream that carries its observer through a driver to the tar reader.

    A driver's `apply_diff` hands its stream to `apply_layer` unchanged; wrapping the
    stream lets the layer store watch the extraction, and bound it with its own limits,
    without a driver knowing.
    """

    def __init__(self, stream: Reader, observer: TarObserver, limits: Limits | None = None) -> None:
        self.stream = stream
        self.observer = observer
        self.limits = limits  # the store's, which override whatever the driver passes

    def read(self, n: int = -1, /) -> bytes:
        return self.stream.read(n)


class TarReader:
    """Iterate over a tar stream; payload bytes must be read with `read_payload`.

    An `observer` (see TarObserver) sees every byte read, in stream order.
    """

    def __init__(
        self,
        stream: Reader,
        limits: Limits | None = None,
        observer: TarObserver | None = None,
    ) -> None:
        if isinstance(stream, Observed):
            observer = observer or stream.observer
            limits = stream.limits or limits
            stream = stream.stream
        self._stream = stream
        # A stream that can hand out payload without copying it (the layer store's) does so.
        self._read_view: Callable[[int], bytes | memoryview] = getattr(stream, "read_view", stream.read)
        self.limits = limits or Limits()
        self.observer = observer
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
        if self.observer is not None and raw:
            self.observer.segment(raw)

    def read_payload(self, chunk_size: int = 1024 * 1024) -> Iterator[bytes | memoryview]:
        """Yield the current entry's payload; must be exhausted before the next entry.

        A chunk is bytes, or a memoryview of bytes where the stream offers `read_view`.
        """
        observer = self.observer
        while self._pending_payload:
            want = min(chunk_size, self._pending_payload)
            chunk = self._read_view(want)
            if not chunk:
                raise ArchiveError("truncated archive in file data", self._current.name if self._current else None)
            self._pending_payload -= len(chunk)
            if observer is not None:
                observer.payload(chunk)
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
            if self.observer is not None:
                self.observer.entry(entry)
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
            info = decode_header(raw)
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
        info: Header | tarfile.TarInfo,
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
