"""The `-init` layer shared by the containers of one image, on vfs and overlay2."""

from __future__ import annotations

import io
import pathlib
from collections.abc import Iterator

import pytest

from cowstore.layers import LayerStore
from cowstore.layers.initlayers import shared_id

from ..support.drivers import open_or_skip
from ..support.tars import layer_tar

calls: list[pathlib.Path] = []


def _init(root: pathlib.Path) -> None:
    calls.append(root)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "hosts").touch()


def _open(root: pathlib.Path, driver: str, options: dict[str, str] | None = None) -> LayerStore:
    return LayerStore(root, open_or_skip(driver, root / driver, options))


@pytest.fixture(params=["vfs", "overlay2"])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[LayerStore]:
    s = _open(tmp_path, request.param)
    calls.clear()
    yield s
    s.close()
    s.driver.cleanup()


def _image(store: LayerStore) -> str:
    return store.register(io.BytesIO(layer_tar({"etc/passwd": (b"root", 0o644)}))).chain_id


def test_containers_of_an_image_share_one_init_layer(store: LayerStore) -> None:
    image = _image(store)
    a = store.create_rw("a", image, init=_init)
    b = store.create_rw("b", image, init=_init)
    assert a.init_id == b.init_id == shared_id(store.get(image).cache_id)
    assert len(calls) == 1  # filled once
    for name in ("a", "b"):
        root = store.mount(name)
        try:
            assert (root / "etc" / "hosts").is_file() and (root / "etc" / "passwd").read_bytes() == b"root"
        finally:
            store.unmount(name)
        assert store.rw_changes(name) == []
    store.remove_rw("a")
    assert store.driver.exists(a.init_id)  # b still sits on it
    store.remove_rw("b")
    assert not store.driver.exists(a.init_id)
    assert store.check() == []


def test_storage_options_or_docker_layout_get_an_init_layer_per_container(tmp_path: pathlib.Path) -> None:
    calls.clear()
    store = _open(tmp_path, "vfs", {"vfs.layout": "docker"})
    try:
        image = _image(store)
        a = store.create_rw("a", image, init=_init)
        b = store.create_rw("b", image, init=_init)
        assert a.init_id == f"{a.mount_id}-init" and b.init_id == f"{b.mount_id}-init"
        assert len(calls) == 2
        store.remove_rw("a")
        assert not store.driver.exists(a.init_id) and store.driver.exists(b.init_id)
    finally:
        store.close()


def test_an_init_layer_left_half_filled_by_a_dead_process_is_made_again(store: LayerStore) -> None:
    image = _image(store)
    init_id = shared_id(store.get(image).cache_id)
    # What a process killed while filling it leaves: its row in state creating, its
    # operation lock free, the -init layer created but empty.
    store.records.add_mount("dead", "0" * 64, init_id, image)
    store.driver.create_rw(init_id, store.get(image).cache_id)
    store.create_rw("c", image, init=_init)
    assert len(calls) == 1
    root = store.mount("c")
    try:
        assert (root / "etc" / "hosts").is_file()
    finally:
        store.unmount("c")
    assert store.recover() == ["removed unfinished container layer dead"]
    assert store.driver.exists(init_id)  # c still sits on it
    assert store.check() == []


def test_a_failing_init_leaves_nothing(store: LayerStore) -> None:
    image = _image(store)

    def broken(root: pathlib.Path) -> None:
        (root / "half").touch()
        raise OSError("disk on fire")

    with pytest.raises(OSError):
        store.create_rw("c", image, init=broken)
    assert store.rw_layers() == [] and not store.driver.exists(shared_id(store.get(image).cache_id))
    store.create_rw("c", image, init=_init)
    assert store.check() == []
