"""Helpers of the conformance suite, ported from moby's graphtest (§5.1 of the reference)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import secrets
import stat
from collections.abc import Iterator

from cowstore.archive.changes import Change
from cowstore.drivers.driver import Driver


def new_id() -> str:
    return secrets.token_hex(32)


@contextlib.contextmanager
def mounted(driver: Driver, id: str) -> Iterator[pathlib.Path]:
    path = driver.get(id)
    try:
        yield path
    finally:
        driver.put(id)


def random_content(size: int, seed: int) -> bytes:
    """Deterministic bytes for (size, seed); writers and checkers share it."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return out[:size]


def read_dir(path: pathlib.Path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n != "lost+found")


def add_file(driver: Driver, id: str, name: str, data: bytes) -> None:
    with mounted(driver, id) as root:
        target = root / name
        target.write_bytes(data)
        target.chmod(0o755)


def check_file(driver: Driver, id: str, name: str, data: bytes) -> None:
    with mounted(driver, id) as root:
        assert (root / name).read_bytes() == data


def create_base(driver: Driver, id: str) -> None:
    driver.create_rw(id, None)
    with mounted(driver, id) as root:
        old = os.umask(0)
        try:
            sub = root / "a subdir"
            sub.mkdir(0o705 | stat.S_ISVTX)
            os.lchown(sub, 1, 2)
            os.chmod(sub, 0o705 | stat.S_ISVTX)
            f = root / "a file"
            f.write_bytes(b"Some data")
            os.chmod(f, 0o222 | stat.S_ISUID)
        finally:
            os.umask(old)


def verify_base(driver: Driver, id: str) -> None:
    with mounted(driver, id) as root:
        sub = os.stat(root / "a subdir")
        assert stat.S_ISDIR(sub.st_mode)
        assert stat.S_IMODE(sub.st_mode) == 0o705 | stat.S_ISVTX
        assert (sub.st_uid, sub.st_gid) == (1, 2)
        f = os.stat(root / "a file")
        assert stat.S_IMODE(f.st_mode) == 0o222 | stat.S_ISUID
        assert (f.st_uid, f.st_gid) == (0, 0)
        assert read_dir(root) == ["a file", "a subdir"]


def add_many_files(driver: Driver, id: str, count: int, seed: int) -> None:
    with mounted(driver, id) as root:
        for i in range(0, count, 100):
            d = root / f"directory-{i}"
            d.mkdir(0o755, exist_ok=True)
            for j in range(100):
                if i + j >= count:
                    break
                f = d / f"file-{i + j}"
                f.write_bytes(random_content(64, seed + i + j))
                f.chmod(0o755)


def check_many_files(driver: Driver, id: str, count: int, seed: int) -> None:
    with mounted(driver, id) as root:
        for i in range(0, count, 100):
            for j in range(100):
                if i + j >= count:
                    break
                f = root / f"directory-{i}" / f"file-{i + j}"
                assert f.read_bytes() == random_content(64, seed + i + j), f


def change_many_files(driver: Driver, id: str, count: int, seed: int) -> list[Change]:
    changes: list[Change] = []
    with mounted(driver, id) as root:
        for i in range(0, count, 100):
            d = root / f"directory-{i}"
            d.mkdir(0o755, exist_ok=True)
            for j in range(100):
                if i + j >= count:
                    break
                if j == 0:
                    changes.append(Change(f"/directory-{i}", "C"))
                if j % 3 == 0:
                    (d / f"file-{i + j}").write_bytes(random_content(64, seed + i + j))
                    changes.append(Change(f"/directory-{i}/file-{i + j}", "C"))
                elif j % 3 == 1:
                    f = d / f"file-{seed}-{i + j}"
                    f.write_bytes(random_content(64, seed + i + j))
                    changes.append(Change(f"/directory-{i}/file-{seed}-{i + j}", "A"))
                else:
                    (d / f"file-{i + j}").unlink()
                    changes.append(Change(f"/directory-{i}/file-{i + j}", "D"))
    return changes


def add_many_layers(driver: Driver, base: str, count: int) -> tuple[str, list[str]]:
    """Layers 1..count on top of base, each recording its id and its parent's id."""
    created = []
    last = base
    for i in range(1, count + 1):
        layer = new_id()
        driver.create(layer, last)
        with mounted(driver, layer) as root:
            (root / "top-id").write_text(layer)
            d = root / f"layer-{i}"
            d.mkdir(0o755)
            (d / "layer-id").write_text(layer)
            (d / "parent-id").write_text(last)
        created.append(layer)
        last = layer
    return last, created


def check_many_layers(driver: Driver, top: str, count: int) -> None:
    with mounted(driver, top) as root:
        assert (root / "top-id").read_text() == top
        expected = top
        for i in range(count, 0, -1):
            d = root / f"layer-{i}"
            assert (d / "layer-id").read_text() == expected
            expected = (d / "parent-id").read_text()


def snapshot_tree(root: pathlib.Path) -> dict[str, tuple]:
    """Everything a root filesystem view must preserve, except times and inode numbers."""
    result: dict[str, tuple] = {}
    groups: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            if name == "lost+found" and pathlib.Path(dirpath) == root:
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            fmt = stat.S_IFMT(st.st_mode)
            data: object = None
            if fmt == stat.S_IFREG:
                data = pathlib.Path(full).read_bytes()
            elif fmt == stat.S_IFLNK:
                data = os.readlink(full)
            link_group = None
            if fmt == stat.S_IFREG and st.st_nlink > 1:
                link_group = groups.setdefault((st.st_dev, st.st_ino), rel)
            xattrs = {}
            if fmt != stat.S_IFLNK:
                for key in os.listxattr(full, follow_symlinks=False):
                    if not key.startswith(("trusted.overlay.", "security.selinux")):
                        xattrs[key] = os.getxattr(full, key, follow_symlinks=False)
            result[rel] = (st.st_mode, st.st_uid, st.st_gid, data, link_group, tuple(sorted(xattrs.items())))
        dirnames[:] = [d for d in dirnames if not (d == "lost+found" and pathlib.Path(dirpath) == root)]
    # Only links *within* the tree are content: a file hard-linked to another layer's
    # copy (legacy overlay shares inodes between image layers) is still a single file.
    members: dict[str, int] = {}
    for entry in result.values():
        if entry[4] is not None:
            members[entry[4]] = members.get(entry[4], 0) + 1
    return {rel: e if e[4] is None or members[e[4]] > 1 else (*e[:4], None, e[5]) for rel, e in result.items()}
