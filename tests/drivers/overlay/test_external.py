"""overlay2's and overlay's mounts for an external mounter (containerd) and their depth limit.

containerd performs these mounts itself with classic mount(2) (containerd's own Go suite
mounts them for real in tests/snapshotter/test_gosuite.py); here: their shapes, and that
overlay2's short links keep 128 layers (the suite's deepest case) within the one page
containerd may pass, while the chain that no longer fits is refused as max depth exceeded.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import pytest

from cowstore.drivers import MountSpec, open_driver
from cowstore.drivers.driver import Driver
from cowstore.errors import MaxDepthExceeded, NotSupported
from cowstore.host import fsutil

from ...support.drivers import opened

pytestmark = pytest.mark.skipif(not fsutil.kernel_has_fs("overlay"), reason="kernel has no overlay filesystem")


@pytest.fixture(params=["overlay2", "overlay"])
def driver(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Driver]:
    with opened(Driver, request.param, tmp_path / request.param) as drv:
        yield drv


def _options(spec: MountSpec) -> dict[str, str]:
    return dict(o.split("=", 1) if "=" in o else (o, "") for o in spec.options)


def test_base_is_a_bind_and_a_child_an_overlay_read_only_as_a_view(driver: Driver) -> None:
    driver.create("base", None)
    driver.create("active", "base")
    driver.create("view", "base")
    assert driver.external_mounts("base", readonly=False) == [
        MountSpec("bind", str(driver.get("base")), ("rbind", "rw"))
    ]
    driver.put("base")
    assert driver.external_mounts("base", readonly=True)[0].options == ("rbind", "ro")

    [rw] = driver.external_mounts("active", readonly=False)
    opts = _options(rw)
    assert (rw.type, rw.source, "ro" in opts) == ("overlay", "overlay", False)
    assert {"lowerdir", "upperdir", "workdir"} <= opts.keys()
    assert all(os.path.isabs(p) and os.path.isdir(p) for p in opts["lowerdir"].split(":"))
    assert opts["upperdir"] == driver.metadata("active")["UpperDir"]

    [view] = driver.external_mounts("view", readonly=True)
    opts = _options(view)
    assert view.type == "overlay" and "ro" in opts and "upperdir" not in opts
    assert len(opts["lowerdir"].split(":")) == 2  # overlay needs two lowers without an upper

    driver.create_rw("container", "base")  # compact: a container layer only the driver mounts
    with pytest.raises(NotSupported):
        driver.external_mounts("container", readonly=False)


def test_overlay2_fits_128_layers_in_a_page_and_refuses_the_chain_that_does_not_fit(tmp_path: pathlib.Path) -> None:
    try:
        driver = open_driver("overlay2", tmp_path / "overlay2")
    except NotSupported as exc:
        pytest.skip(str(exc))
    try:
        parent = None
        depth = 0
        while True:
            driver.create("probe", parent)
            try:
                [spec] = driver.external_mounts("probe", readonly=False)
            except MaxDepthExceeded as exc:
                assert "containerd passes at most" in str(exc)
                break
            finally:
                driver.remove("probe")
            if depth == 128:
                assert len(",".join(spec.options)) > os.sysconf("SC_PAGESIZE")  # fits after containerd compacts
            depth += 1
            driver.create(f"layer{depth}", parent)
            parent = f"layer{depth}"
            assert depth < 500, "the page limit never applied"
        assert 128 < depth < 160
    finally:
        try:
            driver.cleanup()
        finally:
            fsutil.remove_tree(tmp_path / "overlay2")
