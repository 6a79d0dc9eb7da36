"""The store's reserve: made when there is room, given back when the disk is (nearly) full."""

from __future__ import annotations

import pathlib
import sqlite3

import pytest

from cowstore.errors import NoSpace
from cowstore.metadata import reserve as reserve_module
from cowstore.metadata.db import Database
from cowstore.metadata.reserve import RESERVE_BYTES, Reserve


def test_database_keeps_a_reserve(tmp_path: pathlib.Path) -> None:
    Database(tmp_path / "cowstore.db").close()
    assert (tmp_path / reserve_module.RESERVE_FILE).stat().st_size == RESERVE_BYTES


def test_guard_gives_the_reserve_back_on_a_nearly_full_disk(tmp_path: pathlib.Path, monkeypatch) -> None:
    reserve = Reserve(tmp_path)
    reserve.refill()
    assert reserve.path.exists()
    monkeypatch.setattr(Reserve, "free", lambda self: 4096)
    reserve.guard()
    assert not reserve.path.exists()
    reserve.refill()  # no room: not made again
    assert not reserve.path.exists()
    monkeypatch.undo()
    reserve.refill()
    assert reserve.path.exists()


def test_sqlite_full_is_no_space_other_errors_stay(tmp_path: pathlib.Path) -> None:
    reserve = Reserve(tmp_path)
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13  # type: ignore[attr-defined]
    assert isinstance(reserve.error(full), NoSpace)
    other = sqlite3.OperationalError("no such table: x")
    assert reserve.error(other) is other
    with pytest.raises(sqlite3.OperationalError):
        raise reserve.error(other)
