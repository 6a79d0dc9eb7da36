"""The fast header decoder agrees with `tarfile.TarInfo.frombuf` on every block.

`decode_header` skips tarfile for speed, and its checksum test replaces the byte-by-byte
sum with zlib's Adler-32 for ASCII headers: a block it accepts must be one tarfile
accepts with the same fields, and a block whose checksum is off by any amount (65,521,
the Adler modulus, included) must be refused.
"""

from __future__ import annotations

import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cowstore.archive.tarstream import checksum_matches, decode_header
from cowstore.errors import ArchiveError

FIELDS = ("name", "mode", "uid", "gid", "size", "mtime", "type", "linkname", "devmajor", "devminor")


def _block(**fields: object) -> bytes:
    info = tarfile.TarInfo(str(fields.pop("name", "usr/lib/file")))
    for key, value in fields.items():
        setattr(info, key, value)
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def _with_checksum(block: bytes, value: int) -> bytes:
    return block[:148] + b"%06o\0 " % value + block[156:]


def _same(raw: bytes) -> None:
    try:
        want = tarfile.TarInfo.frombuf(raw, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        with pytest.raises(ArchiveError):
            decode_header(raw)
        return
    got = decode_header(raw)
    assert {f: getattr(got, f) for f in FIELDS} == {f: getattr(want, f) for f in FIELDS}


@settings(max_examples=300, deadline=None)
@given(
    name=st.text(st.characters(blacklist_characters="\0/", blacklist_categories=("Cs",)), min_size=1, max_size=25),
    mode=st.integers(0, 0o7777),
    ids=st.tuples(st.integers(0, 0o7777777), st.integers(0, 0o7777777)),
    size=st.integers(0, 2**33 - 1),
    mtime=st.integers(0, 2**33 - 1),
    kind=st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.XHDTYPE]),
)
def test_generated_headers_decode_as_tarfile_does(
    name: str, mode: int, ids: tuple[int, int], size: int, mtime: int, kind: bytes
) -> None:
    raw = _block(name=name, mode=mode, uid=ids[0], gid=ids[1], size=size, mtime=mtime, type=kind)
    _same(raw)


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, 511), value=st.integers(0, 255))
def test_altered_headers_decode_as_tarfile_does(pos: int, value: int) -> None:
    raw = bytearray(_block(name="etc/passwd", size=1234, mtime=1_700_000_000))
    raw[pos] = value
    _same(bytes(raw))


@pytest.mark.parametrize("delta", [1, -1, 255, 65_521, -65_521, 2 * 65_521])
def test_a_checksum_off_by_any_amount_is_refused(delta: int) -> None:
    raw = _block(name="a", size=5)
    right = int(raw[148:154], 8)
    assert checksum_matches(raw, raw[148:156])
    wrong = _with_checksum(raw, right + delta) if right + delta >= 0 else raw[:148] + b"\0" * 8 + raw[156:]
    assert not checksum_matches(wrong, wrong[148:156])


def test_high_bytes_are_summed_exactly() -> None:
    """A header of non-ASCII bytes (a UTF-8 name, or bytes summing past 65,521) takes the exact sum."""
    raw = bytearray(_block(name="é" * 50, size=1))
    raw[157:257] = b"\xff" * 100  # the link name and the prefix: the sum now exceeds 65,521
    raw[345:500] = b"\xff" * 155
    block = _with_checksum(bytes(raw), 0)
    total = sum(block[:148]) + 256 + sum(block[156:])
    assert total > 65_521
    assert checksum_matches(_with_checksum(block, total), b"%06o\0 " % total)
    assert not checksum_matches(_with_checksum(block, total - 65_521), b"%06o\0 " % (total - 65_521))
