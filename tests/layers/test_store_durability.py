"""The order of a container layer's durable steps, on which its power-loss argument rests.

LayerStore.create_rw: the operation marker, then the record (durable only where the
marker cannot order the storage, or when the container makes its image's shared `-init`
layer), then the storage, then the driver's sync of what was made, then the durable
record that says ready. tests/cli/test_power_loss.py replays real disks; this pins the
order itself, step by step.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from cowstore.drivers import open_driver
from cowstore.errors import NotSupported
from cowstore.layers import LayerStore
from cowstore.layers.store import _marker_orders_storage

from ..support.tars import layer_tar

BASE = layer_tar({"etc/os-release": (b"ID=cowstore", 0o644)}, ("etc",))


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[LayerStore]:
    try:
        driver = open_driver("overlay2", tmp_path / "overlay2")
    except NotSupported as exc:
        pytest.skip(str(exc))
    s = LayerStore(tmp_path, driver)
    if not _marker_orders_storage(s.tmp, driver):
        s.close()
        driver.cleanup()
        pytest.skip("the temp directory is not on a journaled filesystem")
    yield s
    s.close()
    driver.cleanup()


def _record_steps(store: LayerStore, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    steps: list[tuple[Any, ...]] = []
    records, driver, db = store.records, store.driver, store.db
    add_mount, create_rw, sync, transaction = records.add_mount, driver.create_rw, driver.sync, db.transaction

    def on_add_mount(name: str, mount_id: str, *args: Any, durable: bool = True) -> None:
        steps.append(("record", durable, (store.tmp / f"{mount_id}.op").exists()))
        add_mount(name, mount_id, *args, durable=durable)

    def on_create_rw(id: str, parent: str | None, **kwargs: Any) -> None:
        steps.append(("storage", id))
        create_rw(id, parent, **kwargs)

    def on_sync(layers: list[str]) -> None:
        steps.append(("sync", tuple(layers)))
        sync(layers)

    @contextlib.contextmanager
    def on_transaction(*, durable: bool = True) -> Iterator[Any]:
        with transaction(durable=durable) as tx:
            yield tx
            steps.append(("commit", durable))

    monkeypatch.setattr(records, "add_mount", on_add_mount)
    monkeypatch.setattr(driver, "create_rw", on_create_rw)
    monkeypatch.setattr(driver, "sync", on_sync)
    monkeypatch.setattr(db, "transaction", on_transaction)
    return steps


def test_first_container_of_an_image_records_durably_before_its_shared_init(
    store: LayerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = store.register(io.BytesIO(BASE))
    steps = _record_steps(store, monkeypatch)
    rw = store.create_rw("first", image.chain_id, init=lambda p: (p / ".cowstoreenv").touch())
    assert rw.init_id is not None
    assert steps == [
        ("record", True, True),
        ("commit", True),
        ("storage", rw.init_id),
        ("storage", rw.mount_id),
        ("sync", (rw.init_id, rw.mount_id)),
        ("commit", True),
    ]


def test_next_containers_record_before_their_storage_without_an_fsync(
    store: LayerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = store.register(io.BytesIO(BASE))
    store.create_rw("first", image.chain_id, init=lambda p: (p / ".cowstoreenv").touch())
    steps = _record_steps(store, monkeypatch)
    rw = store.create_rw("next", image.chain_id, init=lambda p: (p / ".cowstoreenv").touch())
    assert steps == [
        ("record", False, True),  # the marker exists before the record, which is not durable
        ("commit", False),
        ("storage", rw.mount_id),
        ("sync", (rw.mount_id,)),  # the storage is on disk before the record says ready
        ("commit", True),
    ]
