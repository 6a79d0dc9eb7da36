"""register_chain: a chain's layers extracted side by side, published bottom to top, all or nothing."""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from cowstore.digest import Reader, chain_id, sha256_bytes
from cowstore.drivers import open_driver
from cowstore.errors import DigestMismatch, NotSupported
from cowstore.host import mounts
from cowstore.layers import LayerStore
from cowstore.layers.batch import PendingLayer, applies, register_chain

from ..support.tars import E, build, layer_tar

LAYERS = [
    layer_tar({f"base/{n}": b"x" * n for n in range(40)}, ("base",)),
    build(E("base/.wh.3"), E("mid", data=b"middle")),
    build(E("base", "dir", mode=0o700), E("base/.wh..wh..opq"), E("base/only", data=b"only")),
    layer_tar({"top": b"top"}),
]
BELOW = layer_tar({"etc/os-release": (b"ID=cowstore", 0o644)}, ("etc",))


def _pending(data: bytes, diff_id: str | None = None) -> PendingLayer:
    @contextlib.contextmanager
    def open_() -> Iterator[Reader]:
        yield io.BytesIO(data)

    return PendingLayer(diff_id or sha256_bytes(data), open_)


@pytest.fixture(params=["overlay2", "aufs"])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[LayerStore]:
    try:
        s = LayerStore(tmp_path / "root", open_driver(request.param, tmp_path / "root" / request.param), sync=False)
    except NotSupported as exc:
        pytest.skip(str(exc))
    try:
        assert applies(s)
        yield s
    finally:
        s.driver.cleanup()
        s.close()
        assert mounts.mounts_under(tmp_path) == []


def _state(store: LayerStore) -> tuple[object, ...]:
    rows = tuple(tuple(r) for r in store.db.query("SELECT * FROM layers ORDER BY cache_id"))
    return rows, tuple(sorted(store.driver.ids()))


def test_chain_is_the_sequential_chain(store: LayerStore) -> None:
    below = store.register(io.BytesIO(BELOW))
    seen: list[int] = []
    layers = register_chain(store, [_pending(t) for t in LAYERS], below.chain_id, on_layer=seen.append)
    assert seen == [0, 1, 2, 3]
    parent = below
    for layer, data in zip(layers, LAYERS, strict=True):
        assert layer.chain_id == chain_id(parent.chain_id, sha256_bytes(data))
        assert (layer.parent, layer.depth, layer.refcount) == (parent.chain_id, parent.depth + 1, 1)
        assert store.tar_stream(layer.chain_id).read() == data
        parent = layer
    assert store.check(verify_content=True) == []
    assert sorted(store.driver.ids()) == sorted(layer.cache_id for layer in store.layers())


def test_a_corrupt_middle_layer_leaves_nothing(store: LayerStore) -> None:
    below = store.register(io.BytesIO(BELOW))
    before = _state(store)
    pending = [_pending(t) for t in LAYERS]
    pending[1] = _pending(LAYERS[1], sha256_bytes(b"something else"))
    with pytest.raises(DigestMismatch):
        register_chain(store, pending, below.chain_id)
    assert _state(store) == before
    assert os.listdir(store.tmp) == []
    assert store.check(verify_content=True) == []


def test_a_concurrent_import_that_wins_a_layer_keeps_it(store: LayerStore) -> None:
    def other_import(index: int) -> None:
        if index == 1:  # another import publishes layer 1 while this one still extracts it
            store.register(io.BytesIO(LAYERS[1]), chain_id(None, sha256_bytes(LAYERS[0])))

    layers = register_chain(store, [_pending(t) for t in LAYERS], on_layer=other_import)
    assert len(layers) == 2
    assert layers[1].refcount == 2  # the winner's reference, and this call's
    rest = register_chain(store, [_pending(t) for t in LAYERS[2:]], layers[1].chain_id)
    assert store.tar_stream(rest[-1].chain_id).read() == LAYERS[-1]
    assert sorted(store.driver.ids()) == sorted(layer.cache_id for layer in store.layers())
    assert store.check(verify_content=True) == []


WORKER = """
import contextlib, io, os, sys
from cowstore.digest import sha256_bytes
from cowstore.drivers import open_driver
from cowstore.layers import LayerStore
from cowstore.layers.batch import PendingLayer, register_chain
root, driver, below = sys.argv[1:4]
store = LayerStore(root, open_driver(driver, os.path.join(root, driver)))
tars = [bytes.fromhex(line) for line in sys.stdin.read().split()]
pending = [PendingLayer(sha256_bytes(t), lambda t=t: contextlib.nullcontext(io.BytesIO(t))) for t in tars]
with store.lease() as lease:
    register_chain(store, pending, below, lease=lease)
"""


@pytest.mark.parametrize("point", ["register:after-insert", "register:after-apply", "register-chain:after-publish"])
def test_kill_mid_chain_leaves_only_what_was_stored(tmp_path: pathlib.Path, point: str) -> None:
    try:
        store = LayerStore(tmp_path, open_driver("overlay2", tmp_path / "overlay2"))
    except NotSupported as exc:
        pytest.skip(str(exc))
    try:
        below = store.register(io.BytesIO(BELOW))
        store.close()
        proc = subprocess.run(
            [sys.executable, "-c", WORKER, str(tmp_path), "overlay2", below.chain_id],
            input="\n".join(t.hex() for t in LAYERS).encode(),
            env={**os.environ, "COWSTORE_FAULT": point, "PYTHONPATH": os.pathsep.join(sys.path)},
            capture_output=True,
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
        store = LayerStore(tmp_path, open_driver("overlay2", tmp_path / "overlay2"))
        assert store.check(verify_content=True) == []
        assert [layer.chain_id for layer in store.layers()] == [below.chain_id]
        assert store.get(below.chain_id).refcount == 1
        assert sorted(store.driver.ids()) == [below.cache_id]
        assert store.tar_stream(below.chain_id).read() == BELOW
        layers = register_chain(store, [_pending(t) for t in LAYERS], below.chain_id)
        assert store.tar_stream(layers[-1].chain_id).read() == LAYERS[-1]
    finally:
        store.driver.cleanup()
        store.close()
    assert mounts.mounts_under(tmp_path) == []
