"""One driver instance per driver name for the whole conformance run, like moby's graphtest.

Every driver registered in cowstore.drivers is tried; one whose constructor raises
NotSupported is skipped with the reason. Options a driver needs on this host (a loop
device for btrfs, small pool sizes for devicemapper) are given here.
"""

from __future__ import annotations

import shutil

import pytest

from cowstore.drivers import Driver, driver_names, open_driver
from cowstore.errors import NotSupported
from cowstore.host import fsutil

CONFORMANCE_OPTIONS: dict[str, dict[str, str]] = {
    "btrfs": {"btrfs.loopback": "2G"},
    "devicemapper": {
        "dm.loopdatasize": "2G",
        "dm.loopmetadatasize": "256M",
        "dm.basesize": "40M",
        "dm.fs": "ext4",
    },
}


@pytest.fixture(scope="session", params=driver_names())
def driver(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Driver:
    name = request.param
    root = tmp_path_factory.mktemp(f"conformance-{name}")
    try:
        drv = open_driver(name, root / name, CONFORMANCE_OPTIONS.get(name))
    except NotSupported as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"{name}: {exc}")
    try:
        yield drv
    finally:
        try:
            drv.cleanup()
        finally:
            fsutil.remove_tree(root)
