"""Differential POSIX test: random operation sequences on the union and on a plain
directory holding the same tree must give the same results and the same final tree,
also after a remount (which proves the whiteouts and copies on disk are right)."""

from __future__ import annotations

import hashlib
import os
import random
import stat

import pytest

from .conftest import copy_view

NAMES = ["a", "b", "c", "d1", "d2", "d1/a", "d1/b", "d1/s", "d2/a", "d2/deep", "d2/deep/x", "d1/s/y"]


def _populate(union):
    """Three branches with overlapping files, whiteouts, an opaque dir and a hard link."""
    _top, mid, low = union.branches
    for rel, data in {"a": b"low-a", "d1/a": b"low-d1a", "d1/b": b"low-d1b", "d2/deep/x": b"x" * 5000}.items():
        (low / rel).parent.mkdir(parents=True, exist_ok=True)
        (low / rel).write_bytes(data)
    os.link(low / "a", low / "c")
    os.symlink("d1/a", low / "b")
    (mid / "d1").mkdir()
    (mid / "d1" / "a").write_bytes(b"mid-d1a")
    (mid / "d1" / ".wh.b").write_bytes(b"")
    (mid / "d2").mkdir()
    (mid / "d2" / ".wh..wh..opq").write_bytes(b"")
    (mid / "d2" / "a").write_bytes(b"mid-d2a")
    os.chmod(mid / "d2", 0o750)


def snapshot(root):
    """Everything POSIX promises about a tree, minus times the kernel sets itself."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            info = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid]
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    info += [st.st_size, st.st_nlink, hashlib.sha1(fh.read()).hexdigest()]
            elif stat.S_ISLNK(st.st_mode):
                info.append(os.readlink(path))
            elif not stat.S_ISDIR(st.st_mode):
                info.append(st.st_rdev)
            if not stat.S_ISLNK(st.st_mode):
                info.append(sorted((k, os.getxattr(path, k)) for k in os.listxattr(path) if k.startswith("user.")))
            result[rel] = info
    return result


def _op(root, rng, choice):
    """One random operation; returns a comparable outcome (value or errno name)."""
    p = os.path.join(root, rng.choice(NAMES))
    q = os.path.join(root, rng.choice(NAMES))
    data = bytes([rng.randrange(256)]) * rng.randrange(1, 3000)
    offset = rng.choice([0, 7, 4096, 100000])
    try:
        if choice in ("write", "append", "read"):
            # O_NONBLOCK: a FIFO must fail (ENXIO) or open at once, never block the test
            flags = {"write": os.O_WRONLY | os.O_CREAT, "append": os.O_WRONLY | os.O_APPEND, "read": os.O_RDONLY}
            fd = os.open(p, flags[choice] | os.O_NONBLOCK, 0o644)
            try:
                if choice == "read":
                    return hashlib.sha1(os.read(fd, 1 << 20)).hexdigest()
                return os.pwrite(fd, data, offset) if choice == "write" else os.write(fd, data)
            finally:
                os.close(fd)
        if choice == "truncate":
            os.truncate(p, rng.choice([0, 3, 9000]))
        elif choice == "chmod":
            os.chmod(p, rng.choice([0o600, 0o755, 0o4755, 0o1777]))
        elif choice == "chown":
            os.chown(p, rng.randrange(3), rng.randrange(3), follow_symlinks=False)
        elif choice == "mkdir":
            os.mkdir(p, 0o755)
        elif choice == "rmdir":
            os.rmdir(p)
        elif choice == "unlink":
            os.unlink(p)
        elif choice == "rename":
            os.rename(p, q)
        elif choice == "link":
            os.link(p, q)
        elif choice == "symlink":
            os.symlink(rng.choice(["a", "../x", "dangling"]), p)  # relative: never leave the root
        elif choice == "mkfifo":
            os.mkfifo(p, 0o600)
        elif choice == "xattr":
            os.setxattr(p, "user.t", data[:10])
        elif choice == "rmxattr":
            os.removexattr(p, "user.t")
        elif choice == "listdir":
            return sorted(os.listdir(p))
        elif choice == "stat":
            st = os.lstat(p)
            return (stat.S_IFMT(st.st_mode), st.st_size if not stat.S_ISDIR(st.st_mode) else 0)
        return None
    except OSError as exc:
        return os.strerror(exc.errno)


OPS = [
    "write",
    "append",
    "truncate",
    "read",
    "chmod",
    "chown",
    "mkdir",
    "rmdir",
    "unlink",
    "rename",
    "link",
    "symlink",
    "mkfifo",
    "xattr",
    "rmxattr",
    "listdir",
    "stat",
]


@pytest.mark.parametrize("seed", range(int(os.environ.get("UNIONFS_SEEDS", "6"))))
def test_random_operations_match_a_plain_directory(union_factory, tmp_path, seed):
    union = union_factory(3)
    _populate(union)
    union.mount()
    plain = tmp_path / "plain"
    copy_view(union.mnt, plain)
    assert snapshot(union.mnt) == snapshot(plain)
    rng = random.Random(seed)
    for step in range(250):
        choice = rng.choice(OPS)
        state = rng.getstate()
        names = (rng.choice(NAMES), rng.choice(NAMES))
        rng.setstate(state)
        got = _op(str(union.mnt), rng, choice)
        rng.setstate(state)
        want = _op(str(plain), rng, choice)
        assert got == want, f"step {step}: {choice} {names}"
    assert snapshot(union.mnt) == snapshot(plain)
    union.remount()
    assert snapshot(union.mnt) == snapshot(plain)
