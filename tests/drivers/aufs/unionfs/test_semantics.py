"""aufs semantics of the union filesystem, checked on the mount and on the branches."""

from __future__ import annotations

import errno
import os
import stat

import pytest


def _write(path, data=b"", mode=0o644):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


@pytest.fixture
def layered(union_factory):
    """b2: a, d/x, d/y, gone, gonedir/f, opq/old; b1: a (newer), .wh.gone, .wh.gonedir,
    opq/ (opaque) with opq/new, .wh..wh.plnk/ (aufs metadata)."""
    u = union_factory(3)
    _b0, b1, b2 = u.branches
    _write(b2 / "a", b"lower-a")
    _write(b2 / "d" / "x", b"x")
    _write(b2 / "d" / "y", b"y")
    _write(b2 / "gone", b"g")
    _write(b2 / "gonedir" / "f", b"f")
    _write(b2 / "opq" / "old", b"old")
    _write(b1 / "a", b"middle-a")
    _write(b1 / ".wh.gone")
    _write(b1 / ".wh.gonedir")
    _write(b1 / "opq" / ".wh..wh..opq")
    _write(b1 / "opq" / "new", b"new")
    (b1 / ".wh..wh.plnk").mkdir()
    u.mount()
    return u


def test_lookup_order_whiteouts_and_opaque(layered):
    m = layered.mnt
    assert sorted(os.listdir(m)) == ["a", "d", "opq"]
    assert (m / "a").read_bytes() == b"middle-a"
    assert sorted(os.listdir(m / "d")) == ["x", "y"]
    assert os.listdir(m / "opq") == ["new"]
    for hidden in ("gone", "gonedir", ".wh.gone", ".wh..wh.plnk", "opq/old", "opq/.wh..wh..opq"):
        assert not os.path.lexists(m / hidden), hidden


def test_reserved_names_cannot_be_created(layered):
    with pytest.raises(PermissionError):
        (layered.mnt / ".wh.evil").write_bytes(b"")


def test_write_copies_up_with_metadata(layered):
    m, (b0, _b1, b2) = layered.mnt, layered.branches
    os.setxattr(b2 / "d" / "x", "user.k", b"v")
    os.chown(b2 / "d" / "x", 12, 34)
    os.utime(b2 / "d", ns=(10**18, 10**18))
    os.utime(b2 / "d" / "x", ns=(2 * 10**18, 2 * 10**18))
    layered.remount()
    with open(m / "d" / "x", "r+b") as fh:
        fh.seek(0, os.SEEK_END)
        fh.write(b"more")
    st = os.lstat(b0 / "d" / "x")
    assert (b0 / "d" / "x").read_bytes() == b"xmore"
    assert (b2 / "d" / "x").read_bytes() == b"x"
    assert (st.st_uid, st.st_gid) == (12, 34)
    assert os.getxattr(b0 / "d" / "x", "user.k") == b"v"
    assert os.lstat(m / "d").st_mtime_ns == 10**18  # parent times survive the copy-up
    assert sorted(os.listdir(b0 / "d")) == ["x"]


def test_chmod_copies_up_and_keeps_data(layered):
    m, b0 = layered.mnt, layered.branches[0]
    os.chmod(m / "a", 0o600)
    assert stat.S_IMODE(os.lstat(b0 / "a").st_mode) == 0o600
    assert (b0 / "a").read_bytes() == b"middle-a"


def test_open_trunc_copies_no_data(layered):
    m, b0 = layered.mnt, layered.branches[0]
    with open(m / "a", "wb") as fh:
        fh.write(b"new")
    assert (m / "a").read_bytes() == b"new"
    assert (b0 / "a").read_bytes() == b"new"


def test_sparse_file_stays_sparse(layered):
    m, (b0, _b1, b2) = layered.mnt, layered.branches
    with open(b2 / "sparse", "wb") as fh:
        fh.seek(64 << 20)
        fh.write(b"end")
    layered.remount()
    with open(m / "sparse", "r+b") as fh:
        fh.write(b"start")
    st = os.lstat(b0 / "sparse")
    assert st.st_size == (64 << 20) + 3
    assert st.st_blocks * 512 < (1 << 20)
    with open(m / "sparse", "rb") as fh:
        assert fh.read(5) == b"start"
        fh.seek(64 << 20)
        assert fh.read() == b"end"


def test_unlink_and_rmdir_leave_whiteouts(layered):
    m, b0 = layered.mnt, layered.branches[0]
    os.unlink(m / "a")
    os.unlink(m / "d" / "x")
    os.unlink(m / "d" / "y")
    os.rmdir(m / "d")
    assert sorted(os.listdir(m)) == ["opq"]
    assert sorted(os.listdir(b0)) == [".wh.a", ".wh.d"]
    layered.remount()
    assert sorted(os.listdir(m)) == ["opq"]


def test_rmdir_non_empty_fails(layered):
    with pytest.raises(OSError) as exc:
        os.rmdir(layered.mnt / "d")
    assert exc.value.errno == errno.ENOTEMPTY


def test_recreate_after_delete(layered):
    m, b0 = layered.mnt, layered.branches[0]
    os.unlink(m / "d" / "x")
    os.unlink(m / "d" / "y")
    os.rmdir(m / "d")
    os.mkdir(m / "d")
    assert os.listdir(m / "d") == []
    assert sorted(os.listdir(b0 / "d")) == [".wh..wh..opq"]
    os.unlink(m / "a")
    (m / "a").write_bytes(b"again")
    assert sorted(os.listdir(b0)) == ["a", "d"]
    layered.remount()
    assert os.listdir(m / "d") == []
    assert (m / "a").read_bytes() == b"again"


def test_rename_lower_file_and_directory(layered):
    m, b0 = layered.mnt, layered.branches[0]
    os.rename(m / "a", m / "b")
    os.rename(m / "d", m / "e")
    assert sorted(os.listdir(m)) == ["b", "e", "opq"]
    assert sorted(os.listdir(m / "e")) == ["x", "y"]
    assert (m / "b").read_bytes() == b"middle-a"
    assert {".wh.a", ".wh.d", "b", "e"} <= set(os.listdir(b0))
    layered.remount()
    assert sorted(os.listdir(m)) == ["b", "e", "opq"]
    assert (m / "e" / "y").read_bytes() == b"y"


def test_rename_over_lower_directory_hides_its_children(layered):
    m = layered.mnt
    os.mkdir(m / "fresh")
    (m / "fresh" / "z").write_bytes(b"z")
    os.unlink(m / "d" / "x")
    os.unlink(m / "d" / "y")
    os.rename(m / "fresh", m / "d")
    assert os.listdir(m / "d") == ["z"]
    layered.remount()
    assert os.listdir(m / "d") == ["z"]


def test_hard_link_group_copied_up_whole(union_factory):
    u = union_factory(2)
    b0, b1 = u.branches
    _write(b1 / "one", b"shared")
    os.link(b1 / "one", b1 / "two")
    u.mount()
    with open(u.mnt / "one", "ab") as fh:
        fh.write(b"+")
    assert (u.mnt / "two").read_bytes() == b"shared+"
    assert os.lstat(u.mnt / "one").st_nlink == 2
    assert os.lstat(b0 / "one").st_ino == os.lstat(b0 / "two").st_ino


def test_special_files(layered):
    m = layered.mnt
    os.mkfifo(m / "fifo", 0o640)
    os.mknod(m / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.symlink("a", m / "link")
    assert stat.S_ISFIFO(os.lstat(m / "fifo").st_mode)
    assert os.lstat(m / "null").st_rdev == os.makedev(1, 3)
    assert os.readlink(m / "link") == "a"
    with open(m / "null", "wb") as fh:
        fh.write(b"discarded")


def test_setuid_and_ownership_of_new_files(layered):
    m = layered.mnt
    old = os.umask(0)
    try:
        fd = os.open(m / "suid", os.O_CREAT | os.O_WRONLY, 0o4222)
        os.close(fd)
        os.mkdir(m / "sticky", 0o1705)
        os.lchown(m / "sticky", 1, 2)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(m / "suid").st_mode) == 0o4222
    st = os.lstat(m / "sticky")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o1705, 1, 2)


def test_statfs_is_top_branch(layered):
    assert os.statvfs(layered.mnt).f_blocks == os.statvfs(layered.branches[0]).f_blocks


def test_passthrough_negotiated(layered):
    assert layered.info["passthrough"] == layered.passthrough


def test_copy_up_while_open_for_reading(layered):
    """A writer gets the copy while a reader is open (passthrough allows one backing file
    per kernel inode, so the server hands out a new inode). With passthrough the reader
    keeps the lower file, like overlayfs; in Python-data mode both share the kernel
    inode's page cache and the reader sees the write."""
    m = layered.mnt
    with open(m / "a", "rb") as reader:
        with open(m / "a", "r+b") as writer:
            writer.write(b"W")
        assert (m / "a").read_bytes() == b"Widdle-a"
        assert reader.read() == (b"middle-a" if layered.passthrough else b"Widdle-a")
