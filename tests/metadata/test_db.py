"""The store database's transactions: durable or not, and the free-space check of a block."""

from __future__ import annotations

import pathlib

import pytest

from cowstore.metadata.db import Database
from cowstore.metadata.reserve import Reserve

_NORMAL, _FULL = 1, 2


def test_each_commit_syncs_as_it_asks_whatever_came_before(tmp_path: pathlib.Path) -> None:
    db = Database(tmp_path / "cowstore.db")
    try:
        seen = []
        for durable in (False, False, True, True, False, True):
            with db.transaction(durable=durable) as tx:
                seen.append(tx.execute("PRAGMA synchronous").fetchone()[0])
        assert seen == [_NORMAL, _NORMAL, _FULL, _FULL, _NORMAL, _FULL]
    finally:
        db.close()


def test_a_store_that_is_not_durable_never_syncs(tmp_path: pathlib.Path) -> None:
    db = Database(tmp_path / "cowstore.db", durable=False)
    try:
        with db.transaction(durable=True) as tx:
            assert tx.execute("PRAGMA synchronous").fetchone()[0] == _NORMAL
    finally:
        db.close()


def test_guarded_checks_the_free_space_once_for_its_statements(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(tmp_path / "cowstore.db")
    try:
        checks = []
        guard = Reserve.guard
        monkeypatch.setattr(Reserve, "guard", lambda self: checks.append(1) or guard(self))
        with db.guarded():
            db.query("PRAGMA user_version")
            db.write("CREATE TABLE t (x)")
            with db.guarded():
                db.write("INSERT INTO t VALUES (1)", durable=False)
        assert len(checks) == 1
        db.query("SELECT * FROM t")
        assert len(checks) == 2
    finally:
        db.close()
