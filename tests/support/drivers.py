"""The tests' one way to open a driver: the options each needs on this host, or a skip.

btrfs gets a loop-mounted image when the temp directory is not on btrfs, and
devicemapper a pool small enough to set up in seconds.
"""

from __future__ import annotations

import pathlib

import pytest

from cowstore.drivers import Driver, open_driver
from cowstore.errors import NotSupported

HOST_OPTIONS: dict[str, dict[str, str]] = {
    "btrfs": {"btrfs.loopback": "2G"},
    "devicemapper": {
        "dm.loopdatasize": "2G",
        "dm.loopmetadatasize": "256M",
        "dm.basesize": "40M",
        "dm.fs": "ext4",
    },
}


def open_or_skip(name: str, home: pathlib.Path, **overrides: str) -> Driver:
    """Driver `name` in `home` with this host's options (and `overrides`, e.g. `{"dm.fs": "xfs"}`
    given as `**{...}`); the test is skipped where it cannot run."""
    options = {**HOST_OPTIONS.get(name, {}), **overrides}
    try:
        return open_driver(name, home, options or None)
    except NotSupported as exc:
        pytest.skip(f"{name}: {exc}")
