"""One driver instance per driver name for the whole conformance run, like moby's graphtest.

Every driver registered in cowstore.drivers is tried; one whose constructor raises
NotSupported is skipped with the reason (support.drivers gives each the options it
needs on this host).
"""

from __future__ import annotations

import shutil

import pytest

from cowstore.drivers import Driver, driver_names
from cowstore.host import fsutil

from ..support.drivers import open_or_skip


@pytest.fixture(scope="session", params=driver_names())
def driver(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Driver:
    name = request.param
    root = tmp_path_factory.mktemp(f"conformance-{name}")
    try:
        drv = open_or_skip(name, root / name)
    except pytest.skip.Exception:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield drv
    finally:
        try:
            drv.cleanup()
        finally:
            fsutil.remove_tree(root)
