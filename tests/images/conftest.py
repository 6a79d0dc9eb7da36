"""A fresh vfs store per test."""

from __future__ import annotations

import pathlib

import pytest

from cowstore.store import Store


@pytest.fixture
def store(tmp_path: pathlib.Path):
    s = Store(tmp_path / "root", "vfs", sync=False)
    try:
        yield s
    finally:
        s.shutdown()
