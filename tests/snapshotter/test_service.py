"""The Snapshots service's semantics through a real gRPC server on a vfs store.

containerd's own suite (test_gosuite.py) drives every driver; these tests pin what it
does not: namespaces, the gRPC status codes of each refusal, restarts, and the store's
view of snapshots (info, check).
"""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Iterator

import grpc
import pytest

from cowstore.drivers import open_driver
from cowstore.layers import LayerStore
from cowstore.snapshotter.api import snapshots_pb2 as pb
from cowstore.snapshotter.server import serve
from cowstore.store import Store

from ..support.snapshotter import Client


class Running:
    """An in-process server on a vfs store at `root`."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.socket = root.with_name("snap.sock")
        self.layers = LayerStore(root, open_driver("vfs", root / "vfs"))
        self.stop = threading.Event()
        ready = threading.Event()
        self.thread = threading.Thread(
            target=serve, args=(self.layers, self.socket), kwargs={"ready": ready.set, "stop": self.stop}
        )
        self.thread.start()
        assert ready.wait(30)
        self.clients: list[Client] = []

    def client(self, namespace: str | None = "default") -> Client:
        self.clients.append(Client(self.socket, namespace))
        return self.clients[-1]

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.stop.set()
        self.thread.join(30)
        self.layers.close()


@pytest.fixture
def server(tmp_path: pathlib.Path) -> Iterator[Running]:
    running = Running(tmp_path / "root")
    yield running
    running.close()


def code_of(call, *args) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call(*args)
    return caught.value.code()


def test_prepare_commit_view_as_containerd_means_them(server: Running) -> None:
    c = server.client()
    mounts = c.prepare("a", labels={"containerd.io/gc.root": "x"}).mounts
    assert [(m.type, list(m.options)) for m in mounts] == [("bind", ["rbind", "rw"])]
    (pathlib.Path(mounts[0].source) / "hello").write_text("hi")
    active = c.stat("a")
    assert (active.kind, active.parent, dict(active.labels)) == (pb.ACTIVE, "", {"containerd.io/gc.root": "x"})
    assert active.created_at == active.updated_at
    c.commit("base", "a", labels={"l": "1"})
    assert code_of(c.stat, "a") == grpc.StatusCode.NOT_FOUND
    base = c.stat("base")
    assert (base.kind, dict(base.labels)) == (pb.COMMITTED, {"l": "1"})
    view = c.view("v", "base").mounts[0]
    assert list(view.options) == ["rbind", "ro"]
    assert (pathlib.Path(view.source) / "hello").read_text() == "hi"
    assert (c.stat("v").kind, c.stat("v").parent) == (pb.VIEW, "base")
    assert c.mounts("v").mounts[0].source == view.source
    assert sorted(i.name for i in c.list()) == ["base", "v"]
    assert c.usage("base").size == 2 and c.usage("base").inodes == 1


def test_refusals_carry_containerds_status_codes(server: Running) -> None:
    c = server.client()
    c.prepare("a")
    c.commit("base", "a")
    c.prepare("child", "base")
    c.view("v", "base")
    codes = grpc.StatusCode
    assert code_of(c.prepare, "child", "base") == codes.ALREADY_EXISTS
    assert code_of(c.view, "base") == codes.ALREADY_EXISTS  # keys and names share one space
    assert code_of(c.prepare, "x", "missing") == codes.NOT_FOUND
    assert code_of(c.prepare, "x", "child") == codes.FAILED_PRECONDITION  # parent not committed
    assert code_of(c.commit, "frozen", "v") == codes.FAILED_PRECONDITION  # a view cannot be committed
    assert code_of(c.commit, "base", "child") == codes.ALREADY_EXISTS
    assert code_of(c.mounts, "base") == codes.FAILED_PRECONDITION
    assert code_of(c.remove, "base") == codes.FAILED_PRECONDITION  # it has children
    assert code_of(c.remove, "missing") == codes.NOT_FOUND
    assert code_of(c.prepare, "") == codes.INVALID_ARGUMENT
    assert code_of(c.list, "kind=active") == codes.INVALID_ARGUMENT
    info = c.stat("child")
    assert code_of(c.update, info, "parent") == codes.INVALID_ARGUMENT
    c.remove("child")
    c.remove("v")
    c.remove("base")
    assert c.list() == []


def test_update_changes_labels_only_by_field_path(server: Running) -> None:
    c = server.client()
    c.prepare("a", labels={"keep": "1", "drop": "2"})
    info = c.stat("a")
    info.parent = "ignored"
    info.labels.clear()
    info.labels.update({"keep": "changed", "new": "3"})
    updated = c.update(info, "labels.keep", "labels.drop")
    assert dict(updated.labels) == {"keep": "changed"}
    assert updated.parent == "" and updated.updated_at.ToNanoseconds() > updated.created_at.ToNanoseconds()
    assert dict(c.update(info).labels) == {"keep": "changed", "new": "3"}
    info.labels.clear()
    info.labels["only"] = "this"
    assert dict(c.update(info, "labels").labels) == {"only": "this"}


def test_list_filters_are_containerds(server: Running) -> None:
    c = server.client()
    c.prepare("p-tmp")
    c.commit("p", "p-tmp", labels={"l": "1"})
    c.prepare("a", "p", labels={"l": "2", "containerd.io/gc.root": "r"})
    c.view("v", "p")

    def names(*filters: str) -> list[str]:
        return sorted(i.name for i in c.list(*filters))

    assert names("kind==active") == ["a"]
    assert names("parent==p") == ["a", "v"]
    assert names('parent!=""') == ["a", "v"]
    assert names("labels.l") == ["a", "p"]
    assert names("labels.l==2", "name==v") == ["a", "v"]
    assert names('labels."containerd.io/gc.root"==r,kind==active') == ["a"]
    assert names("name~=^[av]$") == ["a", "v"]


def test_namespaces_keep_key_spaces_apart(server: Running) -> None:
    one, two, everyone = server.client("one"), server.client("two"), server.client(None)
    one.prepare("k", labels={"ns": "one"})
    two.prepare("k", labels={"ns": "two"})
    assert dict(one.stat("k").labels) == {"ns": "one"}
    assert [i.name for i in two.list()] == ["k"]
    assert code_of(server.client("three").stat, "k") == grpc.StatusCode.NOT_FOUND
    # containerd's garbage collector calls without a namespace and sees every one.
    assert sorted(dict(i.labels)["ns"] for i in everyone.list()) == ["one", "two"]
    assert code_of(everyone.remove, "k") == grpc.StatusCode.FAILED_PRECONDITION  # which one?
    one.commit("c", "k")
    everyone.remove("c")
    assert [i.name for i in everyone.list()] == ["k"]


def test_snapshots_survive_a_restart_and_count_in_the_store(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "root"
    first = Running(root)
    c = first.client()
    c.prepare("a")
    c.commit("base", "a")
    c.prepare("top", "base")
    first.close()
    second = Running(root)
    try:
        c = second.client()
        assert (c.stat("top").parent, c.stat("base").kind) == ("base", pb.COMMITTED)
        c.view("v", "base")
    finally:
        second.close()
    store = Store(root, "vfs")
    try:
        assert store.info()["Snapshots"] == 3
        assert store.check() == []
    finally:
        store.close()


def test_check_reports_snapshot_storage_that_vanished(server: Running) -> None:
    c = server.client()
    source = pathlib.Path(c.prepare("a").mounts[0].source)
    source.rename(source.with_name("elsewhere"))
    problems = server.layers.check()
    assert sorted((p.kind, "'a'" in p.detail) for p in problems) == [
        ("missing-storage", True),
        ("orphan-storage", False),
    ]
