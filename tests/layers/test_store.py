"""The layer store on vfs: moby's layer/*_test.go cases (reference §2.8) and recovery."""

from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys
import tarfile

import pytest

from cowstore.archive import Change
from cowstore.digest import EMPTY_LAYER_DIGEST, chain_id
from cowstore.drivers import open_driver
from cowstore.errors import DigestMismatch, InvalidArgument, LayerExists, LayerInUse, LayerNotFound
from cowstore.layers import LayerStore
from cowstore.layers.tarsplit import TarSplitError

from ..support.tars import layer_tar


@pytest.fixture
def store(tmp_path: pathlib.Path):
    driver = open_driver("vfs", tmp_path / "vfs")
    s = LayerStore(tmp_path, driver)
    yield s
    s.close()
    driver.cleanup()


def reopen(store: LayerStore) -> LayerStore:
    return LayerStore(store.root, open_driver("vfs", store.root / "vfs"))


def test_empty_layer_constants(store: LayerStore) -> None:
    layer = store.register(io.BytesIO(bytes(1024)))
    assert layer.diff_id == EMPTY_LAYER_DIGEST
    assert layer.chain_id == EMPTY_LAYER_DIGEST
    assert layer.size == 0 and layer.parent is None


def test_mount_and_register(store: LayerStore) -> None:
    layer = store.register(io.BytesIO(layer_tar({"testfile.txt": (b"some test data", 0o644)})))
    store.create_rw("c1", layer.chain_id)
    root = store.mount("c1")
    assert (root / "testfile.txt").read_bytes() == b"some test data"
    store.unmount("c1")


def test_chain_ids(store: LayerStore) -> None:
    l1 = store.register(io.BytesIO(layer_tar({"a": (b"1", 0o644)})))
    l2 = store.register(io.BytesIO(layer_tar({"b": (b"2", 0o644)})), l1.chain_id)
    assert l2.chain_id == chain_id(l1.chain_id, l2.diff_id)
    assert store.total_size(l2.chain_id) == 2
    assert [x.chain_id for x in store.chain(l2.chain_id)] == [l2.chain_id, l1.chain_id]


def test_register_existing_layer_shares_it(store: LayerStore) -> None:
    data = layer_tar({"a": (b"same", 0o644)})
    first = store.register(io.BytesIO(data))
    second = store.register(io.BytesIO(data))
    assert first.cache_id == second.cache_id
    assert store.get(first.chain_id).refcount == 2
    assert len(store.layers()) == 1


def test_layer_release_cascades(store: LayerStore) -> None:
    l1 = store.register(io.BytesIO(layer_tar({"1": (b"1", 0o644)})))
    l2 = store.register(io.BytesIO(layer_tar({"2": (b"2", 0o644)})), l1.chain_id)
    l3a = store.register(io.BytesIO(layer_tar({"3a": (b"3", 0o644)})), l2.chain_id)
    l3b = store.register(io.BytesIO(layer_tar({"3b": (b"3", 0o644)})), l2.chain_id)
    assert store.release(l1.chain_id) == []
    assert store.release(l2.chain_id) == []
    assert len(store.layers()) == 4
    assert [x.chain_id for x in store.release(l3b.chain_id)] == [l3b.chain_id]
    deleted = store.release(l3a.chain_id)
    assert [x.chain_id for x in deleted] == [l3a.chain_id, l2.chain_id, l1.chain_id]
    assert store.layers() == []
    assert os.listdir(store.driver.home / "dir") == []


def test_store_restore(store: LayerStore) -> None:
    l1 = store.register(io.BytesIO(layer_tar({"1": (b"1", 0o644)})))
    store.create_rw("m", l1.chain_id)
    root = store.mount("m")
    (root / "testfile.txt").write_text("nothing here")
    store.unmount("m")
    store.close()
    again = reopen(store)
    assert again.get(l1.chain_id) == l1
    with pytest.raises(LayerExists, match="mount already exists with name"):
        again.create_rw("m", l1.chain_id)
    root = again.mount("m")
    assert (root / "testfile.txt").read_text() == "nothing here"
    again.unmount("m")
    assert again.remove_rw("m") == []
    assert [x.chain_id for x in again.release(l1.chain_id)] == [l1.chain_id]
    again.close()


def test_tar_stream_is_byte_identical(store: LayerStore) -> None:
    tar1 = layer_tar({"etc/hosts": (b"mydomain 10.0.0.1", 0o644), "etc/profile": (b"PATH=/usr/bin", 0o644)}, ("etc",))
    l1 = store.register(io.BytesIO(tar1 + bytes(10240)))  # trailing padding is part of the diff id
    # a file slipped into the layer behind the store's back must not leak into the tar
    (store.driver.get(l1.cache_id) / "etc" / "shadow").write_text("secret")
    tar2 = layer_tar(
        {
            "etc/hosts": (b"mydomain 10.0.0.2", 0o644),
            "etc/profile": (b"PATH=/usr/bin", 0o664),
            "root/.bashrc": (b"x", 0o644),
        }
    )
    l2 = store.register(io.BytesIO(tar2), l1.chain_id)
    assert store.tar_stream(l1.chain_id).read() == tar1 + bytes(10240)
    assert store.tar_stream(l2.chain_id).read() == tar2


def test_tar_stream_verification_detects_tampering(store: LayerStore) -> None:
    layer = store.register(io.BytesIO(layer_tar({"f": (b"original", 0o644)})))
    (store.driver.get(layer.cache_id) / "f").write_bytes(b"tampered")
    with pytest.raises(TarSplitError, match="checksum failed"):
        store.tar_stream(layer.chain_id)


def test_duplicate_entries_reassemble(store: LayerStore) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for content in (b"first", b"second!"):
            info = tarfile.TarInfo("f")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    data = buf.getvalue()
    layer = store.register(io.BytesIO(data))
    assert (store.driver.get(layer.cache_id) / "f").read_bytes() == b"second!"
    assert store.tar_stream(layer.chain_id).read() == data


def test_expected_diff_id_mismatch_stores_nothing(store: LayerStore) -> None:
    with pytest.raises(DigestMismatch):
        store.register(io.BytesIO(layer_tar({"f": (b"x", 0o644)})), expected_diff_id="sha256:" + "0" * 64)
    assert store.layers() == []
    assert os.listdir(store.driver.home / "dir") == []


def test_mount_init_size_and_changes(store: LayerStore) -> None:
    base = store.register(
        io.BytesIO(layer_tar({"testfile1": (b"1", 0o644), "testfile2": (b"2", 0o644), "testfile3": (b"3", 0o644)}))
    )

    def init(root: pathlib.Path) -> None:
        (root / "testfile1").write_text("init data!")
        os.chmod(root / "testfile1", 0o777)
        (root / "file-init").write_text("init")

    store.create_rw("c", base.chain_id, init=init)
    root = store.mount("c")
    assert (root / "testfile1").read_text() == "init data!"
    os.chmod(root / "testfile1", 0o755)
    (root / "testfile1").write_text("mutated")
    (root / "testfile2").unlink()
    os.chmod(root / "testfile3", 0o755)
    (root / "testfile4").write_text("Mutable contents")
    store.unmount("c")
    assert store.rw_changes("c") == [
        Change("/testfile1", "C"),
        Change("/testfile2", "D"),
        Change("/testfile3", "C"),
        Change("/testfile4", "A"),
    ]
    assert store.rw_size("c") == len("mutated") + 1 + 16


def test_remove_rw_refuses_mounted(store: LayerStore) -> None:
    store.create_rw("c", None)
    store.mount("c")
    with pytest.raises(LayerInUse):
        store.remove_rw("c")
    store.remove_rw("c", force=True)
    with pytest.raises(LayerNotFound):
        store.get_rw("c")


def test_commit_round_trip(store: LayerStore) -> None:
    base = store.register(io.BytesIO(layer_tar({"a": (b"a", 0o644)})))
    store.create_rw("c", base.chain_id)
    root = store.mount("c")
    (root / "newfile.txt").write_text("new")
    store.unmount("c")
    with store.rw_diff("c") as diff:
        committed = store.register(diff, base.chain_id)
    store.create_rw("d", committed.chain_id)
    assert (store.mount("d") / "newfile.txt").read_text() == "new"
    store.unmount("d")


def test_bad_tar_leaves_nothing(store: LayerStore) -> None:
    for bad in (b"not a tar at all" * 100, layer_tar({"f": (b"x" * 5000, 0o644)})[:2000]):
        with pytest.raises(InvalidArgument) as info:
            store.register(io.BytesIO(bad))
        assert "Traceback" not in str(info.value)
    assert store.layers() == []
    assert os.listdir(store.driver.home / "dir") == []


KILL_SCRIPT = """
import io, os, sys, signal
from cowstore.drivers import open_driver
from cowstore.layers import LayerStore
from cowstore.drivers.vfs import VfsDriver
root = sys.argv[1]
real_apply = VfsDriver.apply_diff
def dying_apply(self, id, parent, stream):
    real_apply(self, id, parent, stream)
    os.kill(os.getpid(), signal.SIGKILL)
VfsDriver.apply_diff = dying_apply
store = LayerStore(root, open_driver("vfs", os.path.join(root, "vfs")))
store.register(io.BytesIO(sys.stdin.buffer.read()))
"""


def test_killed_register_is_cleaned_on_next_open(tmp_path: pathlib.Path) -> None:
    data = layer_tar({"f": (b"content", 0o644)})
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(tmp_path)],
        input=data,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == -9
    assert len(os.listdir(tmp_path / "vfs" / "dir")) == 1
    store = LayerStore(tmp_path, open_driver("vfs", tmp_path / "vfs"))
    try:
        assert store.layers() == []
        assert os.listdir(tmp_path / "vfs" / "dir") == []
        layer = store.register(io.BytesIO(data))
        assert store.tar_stream(layer.chain_id).read() == data
    finally:
        store.close()


def test_store_root_is_private(store: LayerStore) -> None:
    """Layers carry setuid binaries and devices: other users must not reach them (CVE-2021-41091)."""
    import stat

    layer = store.register(io.BytesIO(layer_tar({"bin/su": (b"#!", 0o4755)}, ("bin",))))
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700
    setuid = store.driver.get(layer.cache_id) / "bin" / "su"
    assert os.stat(setuid).st_mode & stat.S_ISUID
    denied = subprocess.run(["cat", str(setuid)], user="nobody", capture_output=True)
    assert denied.returncode != 0 and b"Permission denied" in denied.stderr


def test_tar_stream_when_entries_are_never_extracted_as_files(store: LayerStore) -> None:
    """Payloads that do not end up as layer files (replaced dir, aufs link dir) still round-trip."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in [
            ("d", tarfile.DIRTYPE, b""),
            ("d/f", tarfile.REGTYPE, b"under a directory that is replaced"),
            ("d", tarfile.REGTYPE, b"now a file"),
            (".wh..wh.plnk/1.2", tarfile.REGTYPE, b"aufs pseudo-link payload"),
        ]:
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    data = buf.getvalue()
    layer = store.register(io.BytesIO(data))
    assert (store.driver.get(layer.cache_id) / "d").read_bytes() == b"now a file"
    assert store.tar_stream(layer.chain_id).read() == data


class _FailsAtEnd(io.RawIOBase):
    """A layer stream that raises on its final read, as a registry client's digest check does;
    it also records the largest read, to show the store streams rather than spools."""

    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)
        self.largest = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
        self.largest = max(self.largest, len(buffer))
        count = self.data.readinto(buffer)
        if count == 0:
            raise DigestMismatch("blob digest does not match")
        return count


def test_stream_that_raises_at_its_end_leaves_nothing(store: LayerStore) -> None:
    big = layer_tar({f"f{i}": (os.urandom(256 * 1024), 0o644) for i in range(16)})
    stream = _FailsAtEnd(big)
    with pytest.raises(DigestMismatch, match="blob digest"):
        store.register(stream, expected_diff_id=None)
    assert stream.largest < len(big) // 2, "the stream was read whole, not streamed"
    assert store.layers() == []
    assert os.listdir(store.driver.home / "dir") == []
    again = reopen(store)
    try:
        assert again.layers() == []
    finally:
        again.close()
