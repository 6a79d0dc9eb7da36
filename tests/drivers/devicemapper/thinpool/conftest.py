"""Fixtures for the thin pool engine tests: small sparse data and metadata files."""

from __future__ import annotations

import pathlib

import pytest

from cowstore.drivers.devicemapper.thinpool import ThinPool

MiB = 1024 * 1024


def make_files(
    tmp: pathlib.Path, data_size: int = 64 * MiB, meta_size: int = 4 * MiB
) -> tuple[pathlib.Path, pathlib.Path]:
    meta, data = tmp / "metadata", tmp / "data"
    with open(meta, "wb") as f:
        f.truncate(meta_size)
    with open(data, "wb") as f:
        f.truncate(data_size)
    ThinPool.format(meta, data)
    return meta, data


@pytest.fixture
def files(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    return make_files(tmp_path)


@pytest.fixture
def pool(files: tuple[pathlib.Path, pathlib.Path]):
    p = ThinPool.open(*files, min_free_pct=0)
    try:
        yield p
    finally:
        p.abandon()
