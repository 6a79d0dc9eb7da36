"""Eight processes share one store for a bounded time: no corruption, no duplicate layers."""

from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys

import pytest

from cowstore.drivers import open_driver
from cowstore.errors import NotSupported
from cowstore.layers import LayerStore

from ..support.tars import layer_tar

SHARED = layer_tar({"bin/tool": (b"\x7fELF" + b"x" * 4096, 0o755)}, ("bin",))

WORKER = """
import io, os, random, sys, time
from cowstore.drivers import open_driver
from cowstore.errors import LayerInUse, LayerNotFound
from cowstore.layers import LayerStore
root, driver, worker, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
shared = sys.stdin.buffer.read()
store = LayerStore(root, open_driver(driver, os.path.join(root, driver)))
rng = random.Random(worker)
deadline = time.monotonic() + seconds
done = 0
try:
    base = store.register(io.BytesIO(shared))
    while time.monotonic() < deadline:
        name = f"w{worker}-{done}"
        store.create_rw(name, base.chain_id, init=lambda p: (p / ".cowstoreenv").touch())
        root_fs = store.mount(name)
        (root_fs / f"file-{worker}").write_text(f"written by {worker} #{done}")
        store.unmount(name)
        if rng.random() < 0.5:
            with store.rw_diff(name) as diff:
                committed = store.register(diff, base.chain_id)
            store.release(committed.chain_id)
        again = store.register(io.BytesIO(shared))
        store.release(again.chain_id)
        store.remove_rw(name)
        done += 1
    store.release(base.chain_id)
finally:
    store.close()
print(done)
"""


@pytest.mark.parametrize("driver", ["vfs", "overlay2"])
def test_eight_processes_share_a_store(tmp_path: pathlib.Path, driver: str) -> None:
    try:
        store = LayerStore(tmp_path, open_driver(driver, tmp_path / driver))
    except NotSupported as exc:
        pytest.skip(str(exc))
    keeper = store.register(io.BytesIO(SHARED))  # keeps the shared layer alive between workers
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path), driver, str(i), "4"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for i in range(8)
    ]
    try:
        results = [p.communicate(SHARED, timeout=300) for p in procs]
        for proc, (out, err) in zip(procs, results, strict=True):
            assert proc.returncode == 0, err.decode()
            assert int(out) >= 1
        assert store.check(verify_content=True, expected_refs={keeper.chain_id: 1}) == []
        assert [layer.chain_id for layer in store.layers()] == [keeper.chain_id]
        assert store.rw_layers() == []
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        store.driver.cleanup()
        store.close()
