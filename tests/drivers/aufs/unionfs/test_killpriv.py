"""Set-id bits and file capabilities after writes, truncation and chown, union vs a
plain directory.

The server negotiates FUSE_HANDLE_KILLPRIV_V2 (so the kernel stops asking for
security.capability before every write), which makes clearing set-id bits the
server's job, including for writes that passthrough would never show it.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess

import pytest

NOBODY = 65534
# name -> mode of a root-owned file that `nobody` may write.
FILES = {
    "write_suid": 0o4777,
    "write_sgid_gx": 0o2777,
    "write_sgid_no_gx": 0o2767,
    "truncate_suid": 0o4777,
    "open_trunc_suid": 0o4777,
    "plain": 0o777,
    "root_writes_suid": 0o4777,
    "chown_suid": 0o4755,
}

# Runs in the directory under test (subprocess changes directory before dropping to
# nobody, so the parents of a pytest tmp dir need not be traversable).
_AS_NOBODY = r"""
import os
for name in ("write_suid", "write_sgid_gx", "write_sgid_no_gx", "plain"):
    fd = os.open(name, os.O_WRONLY)
    os.write(fd, b"x")
    os.close(fd)
os.truncate("truncate_suid", 1)
os.close(os.open("open_trunc_suid", os.O_WRONLY | os.O_TRUNC))
"""


def _populate(base):
    for name, mode in FILES.items():
        path = base / name
        path.write_bytes(b"data")
        os.chmod(path, mode)


def _exercise(base):
    """Do every operation in `base`; returns name -> permission bits afterwards."""
    subprocess.run(["/usr/bin/python3", "-c", _AS_NOBODY], cwd=base, check=True, user=NOBODY, group=NOBODY, timeout=60)
    with open(base / "root_writes_suid", "r+b") as fh:
        fh.write(b"x")
    os.chown(base / "chown_suid", 12, 34)
    return {name: oct(stat.S_IMODE(os.lstat(base / name).st_mode)) for name in FILES}


def test_setid_bits_cleared_like_a_plain_directory(union_factory, tmp_path):
    if not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("/usr/bin/python3 is needed to run a writer as nobody")
    u = union_factory(2)
    _populate(u.branches[1])
    u.mount()
    reference = tmp_path / "reference"
    reference.mkdir()
    _populate(reference)
    assert _exercise(u.mnt) == _exercise(reference)


def test_write_drops_file_capability(union_factory):
    u = union_factory(2)
    lower = u.branches[1] / "tool"
    lower.write_bytes(b"binary")
    cap = bytes.fromhex("0000000200100000000000000000000000000000")  # v2: cap_net_bind_service
    try:
        os.setxattr(lower, "security.capability", cap)
    except OSError as exc:
        pytest.skip(f"security.capability cannot be set here: {exc.strerror}")
    u.mount()
    assert os.getxattr(u.mnt / "tool", "security.capability") == cap
    for _ in range(2):  # the second write exercises the kernel's S_NOSEC shortcut
        with open(u.mnt / "tool", "r+b") as fh:
            fh.write(b"B")
        with pytest.raises(OSError) as info:
            os.getxattr(u.mnt / "tool", "security.capability")
        assert info.value.errno == errno.ENODATA
        os.setxattr(u.mnt / "tool", "security.capability", cap)
        assert os.getxattr(u.mnt / "tool", "security.capability") == cap
