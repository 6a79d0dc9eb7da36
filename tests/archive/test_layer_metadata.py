"""Layer entries whose metadata no filesystem can hold are one-line errors, not tracebacks.

uid/gid beyond 32 bits, NUL inside a symlink target or an xattr name, device numbers
no kernel encodes and timestamps past what utimensat takes: each is refused while the
tar is read, with the entry named, and the store stays as it was (the fixture checks).
"""

from __future__ import annotations

import io
import tarfile

import pytest

from ..images.test_hostile_images import cli, fails  # noqa: F401  (the fixture)
from ..support.tars import E, build


def _gnu(info: tarfile.TarInfo) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info)
    return buf.getvalue()


def _device(major: int, minor: int) -> bytes:
    info = tarfile.TarInfo("dev/weird")
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = major, minor
    return _gnu(info)


def _owned(uid: int) -> bytes:
    info = tarfile.TarInfo("owned")
    info.uid = uid
    return _gnu(info)


HOSTILE = {
    "pax uid over 32 bits": (build(E("f", pax={"uid": str(2**40)})), "uid"),
    "pax gid of -1 as unsigned": (build(E("f", pax={"gid": str(2**32 - 1)})), "gid"),
    "base-256 uid": (_owned(2**50), "uid"),
    "base-256 negative uid": (_owned(-5), "uid"),
    "NUL in a symlink target": (build(E("l", "symlink", pax={"linkpath": "a\0b"})), "NUL"),
    "NUL in a hard link target": (build(E("f", data=b"x"), E("h", "link", pax={"linkpath": "f\0x"})), "NUL"),
    "NUL in an xattr name": (build(E("f", pax={"SCHILY.xattr.user.a\0b": "v"})), "NUL"),
    "empty xattr name": (build(E("f", pax={"SCHILY.xattr.": "v"})), "xattr"),
    "huge devmajor": (_device(2**40, 1), "device"),
    "huge devminor": (_device(1, 2**33), "device"),
    "mtime 1e300": (build(E("f", pax={"mtime": "1e300"})), "mtime"),
    "mtime -1e300": (build(E("f", pax={"mtime": "-1e300"})), "mtime"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_impossible_metadata_is_one_line(cli, case: str) -> None:  # noqa: F811
    layer, text = HOSTILE[case]
    fails(cli("import", "-", "meta:1", input=layer), text)
