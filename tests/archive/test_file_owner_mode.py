"""A file is created with its final owner and mode when it can be, and chowned and chmodded
when it cannot: the result is the tar's metadata either way.

The applier skips the chown for an entry owned by the extracting uid and gid, and the
chmod for a mode the umask leaves alone; a setgid directory of another group, a default
ACL, a restrictive umask and setuid bits are where skipping would go wrong.
"""

from __future__ import annotations

import io
import os
import pathlib
import stat
import struct

import pytest

from cowstore.archive.apply import apply_layer

from ..support.tars import E, build


def _apply(tar: bytes, root: pathlib.Path) -> None:
    apply_layer(io.BytesIO(tar), root)


def _meta(path: pathlib.Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_root_owned_file_in_a_setgid_directory_of_another_group(tmp_path: pathlib.Path) -> None:
    tar = build(
        E("shared", "dir", mode=0o2775, gid=1234),
        E("shared/mine", data=b"x", mode=0o644),
        E("shared/theirs", data=b"y", mode=0o640, uid=1000, gid=1234),
    )
    _apply(tar, tmp_path)
    assert _meta(tmp_path / "shared") == (0, 1234, 0o2775)
    assert _meta(tmp_path / "shared/mine") == (0, 0, 0o644)
    assert _meta(tmp_path / "shared/theirs") == (1000, 1234, 0o640)


def test_a_lower_layers_setgid_directory(tmp_path: pathlib.Path) -> None:
    """The directory is already there (a copy of the parent layer, as vfs applies on)."""
    shared = tmp_path / "var/mail"
    shared.mkdir(parents=True)
    os.chown(shared, 0, 8)
    shared.chmod(0o2775)
    _apply(build(E("var/mail/root", data=b"mail", mode=0o600)), tmp_path)
    assert _meta(shared / "root") == (0, 0, 0o600)


def test_modes_under_a_restrictive_umask(tmp_path: pathlib.Path) -> None:
    previous = os.umask(0o077)
    try:
        _apply(
            build(E("open", data=b"a", mode=0o755), E("suid", data=b"b", mode=0o4755), E("ro", data=b"c", mode=0o444)),
            tmp_path,
        )
    finally:
        os.umask(previous)
    assert _meta(tmp_path / "open")[2] == 0o755
    assert _meta(tmp_path / "suid")[2] == 0o4755
    assert _meta(tmp_path / "ro")[2] == 0o444
    assert (tmp_path / "ro").read_bytes() == b"c"


def test_a_default_acl_does_not_stand_in_for_the_mode(tmp_path: pathlib.Path) -> None:
    acl = tmp_path / "acl"
    acl.mkdir()
    # The kernel's xattr form of the default ACL u::rwx,g::---,o::--- (version 2, then tag, perm, id).
    entries = [(0x01, 7), (0x04, 0), (0x20, 0)]
    value = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF) for tag, perm in entries)
    try:
        os.setxattr(acl, "system.posix_acl_default", value)
    except OSError:
        pytest.skip("no POSIX ACLs on the test directory's filesystem")
    _apply(build(E("acl/f", data=b"x", mode=0o644)), tmp_path)
    assert _meta(acl / "f")[2] == 0o644
