"""The tests' one way to open a whole Store on a driver that may not run here (then: skip)."""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from cowstore.errors import NotSupported
from cowstore.host import mounts
from cowstore.layers import Layer, LayerStore, batch
from cowstore.store import Store


@contextlib.contextmanager
def store_or_skip(tmp_path: pathlib.Path, driver: str, **kwargs: Any) -> Iterator[Store]:
    """A Store under tmp_path/root, shut down afterwards with nothing left mounted."""
    try:
        store = Store(tmp_path / "root", driver, sync=False, **kwargs)
    except NotSupported as exc:
        pytest.skip(f"{driver}: {exc}")
    try:
        yield store
    finally:
        store.shutdown()
        assert mounts.mounts_under(tmp_path) == []


def chain_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, how many layers each `batch.register_chain` call is given (side by side)."""
    calls: list[int] = []
    real = batch.register_chain

    def spy(store: LayerStore, pending: Sequence[batch.PendingLayer], *args: Any, **kwargs: Any) -> list[Layer]:
        calls.append(len(pending))
        return real(store, pending, *args, **kwargs)

    monkeypatch.setattr(batch, "register_chain", spy)
    return calls
