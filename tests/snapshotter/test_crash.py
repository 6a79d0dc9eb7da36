"""Kill the snapshotter in the middle of a Prepare (or a Remove) and start it again.

The killed server leaves a snapshot record in state creating (or removing); the next
server finishes the job when it opens the store: the half-made snapshot is gone with
its storage, everything committed before is intact, and `check` finds nothing.
"""

from __future__ import annotations

import pathlib

import grpc
import pytest

from cowstore.snapshotter.api import snapshots_pb2 as pb
from cowstore.store import Store

from ..support.drivers import HOST_OPTIONS
from ..support.snapshotter import ServerProcess

POINTS = ["snapshot:after-insert", "snapshot:after-create", "snapshot-remove:after-mark"]


@pytest.mark.parametrize("driver", ["vfs", "overlay2"])
@pytest.mark.parametrize("point", POINTS)
def test_killed_server_leaves_a_consistent_store(tmp_path: pathlib.Path, driver: str, point: str) -> None:
    root = tmp_path / "root"
    server = ServerProcess(root, driver).start()
    try:
        c = server.client()
        base = pathlib.Path(c.prepare("a").mounts[0].source)
        (base / "kept").write_text("committed before the crash")
        c.commit("base", "a")
        c.prepare("b", "base")
        c.commit("doomed", "b")
        c.close()
        server.stop()

        faulty = ServerProcess(root, driver, env={"COWSTORE_FAULT": point}).start()
        c = faulty.client()
        with pytest.raises(grpc.RpcError) as caught:
            if point.startswith("snapshot-remove"):
                c.remove("doomed")
            else:
                c.prepare("half", "base")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert faulty.wait() == -9
        c.close()

        server = ServerProcess(root, driver).start()
        c = server.client()
        assert sorted(i.name for i in c.list()) == (
            ["base"] if point.startswith("snapshot-remove") else ["base", "doomed"]
        )
        view = c.view("look", "base").mounts
        if view[0].type == "bind":
            assert (pathlib.Path(view[0].source) / "kept").read_text() == "committed before the crash"
        c.remove("look")
        c.close()
        server.stop()
        store = Store(root, driver, HOST_OPTIONS.get(driver))
        try:
            assert store.check() == []
            known = {s.id for s in store.layers.snapshots.snapshots(None)}
            assert set(store.driver.ids()) == known
        finally:
            store.close()
    finally:
        server.release()


def test_second_server_on_one_socket_is_refused(tmp_path: pathlib.Path) -> None:
    server = ServerProcess(tmp_path / "root", "vfs").start()
    try:
        second = ServerProcess(tmp_path / "root", "vfs").start()
        assert second.wait() == 1
        assert "already serves" in second.log.read_text()
        assert server.client().list() == [] and pb.Info is not None
    finally:
        server.release()


def test_sigterm_stops_the_server_cleanly(tmp_path: pathlib.Path) -> None:
    server = ServerProcess(tmp_path / "root", "vfs").start()
    try:
        c = server.client()
        c.prepare("a")
        c.close()
        assert server.stop() == 0
        assert not server.socket.exists()
        again = ServerProcess(tmp_path / "root", "vfs").start()
        c = again.client()
        assert [i.name for i in c.list()] == ["a"]
        c.close()
        assert again.stop() == 0
    finally:
        server.release()
