"""vfs specifics: size limits through xfs project quotas."""

from __future__ import annotations

import pathlib

from cowstore.drivers import open_driver
from cowstore.host import quota


def test_every_limited_layer_gets_its_own_project(xfs_mount: pathlib.Path) -> None:
    driver = open_driver("vfs", xfs_mount / "vfs", {"size": "8M"})
    for id in ("a", "b", "c"):
        driver.create_rw(id, None)
    projects = [quota.project_id(driver.get(id)) for id in ("a", "b", "c")]
    assert len(set(projects)) == 3
    assert 0 not in projects
