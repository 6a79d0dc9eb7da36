"""The tests' one way to open a driver: the options each needs on this host, or a skip.

btrfs gets a loop-mounted image when the temp directory is not on btrfs, and
devicemapper a pool small enough to set up in seconds.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator, Mapping
from typing import TypeVar

import pytest

from cowstore.drivers import Driver, open_driver
from cowstore.errors import NotSupported
from cowstore.host import fsutil

D = TypeVar("D", bound=Driver)

HOST_OPTIONS: dict[str, dict[str, str]] = {
    "btrfs": {"btrfs.loopback": "2G"},
    "devicemapper": {
        "dm.loopdatasize": "2G",
        "dm.loopmetadatasize": "256M",
        "dm.basesize": "40M",
        "dm.fs": "ext4",
    },
}


def open_or_skip(name: str, home: pathlib.Path, options: Mapping[str, str] | None = None, **overrides: str) -> Driver:
    """Driver `name` in `home` with this host's options, then `options` and `overrides` (e.g.
    `**{"dm.fs": "xfs"}`); the test is skipped where it cannot run."""
    try:
        return open_driver(name, home, {**HOST_OPTIONS.get(name, {}), **(options or {}), **overrides})
    except NotSupported as exc:
        pytest.skip(f"{name}: {exc}")


@contextlib.contextmanager
def opened(kind: type[D], name: str, home: pathlib.Path, options: Mapping[str, str] | None = None) -> Iterator[D]:
    """`open_or_skip` for a fixture: a `kind` driver, cleaned up and its home removed after the block."""
    drv = open_or_skip(name, home, options)
    try:
        assert isinstance(drv, kind)
        yield drv
    finally:
        try:
            drv.cleanup()
        finally:
            fsutil.remove_tree(home)
