"""`system df` adds up, per driver, to what the filesystem itself says the store used."""

from __future__ import annotations

import os
import pathlib

import pytest

from cowstore.app.demo import build_image_archive
from cowstore.drivers import driver_names
from cowstore.errors import NotSupported
from cowstore.host import diskusage
from cowstore.images import load
from cowstore.store import Store
from cowstore.system.usage import system_usage

from ..support.drivers import HOST_OPTIONS
from ..support.loopfs import loop_filesystem, used_bytes

MiB = 1024 * 1024


@pytest.mark.parametrize("driver", driver_names())
def test_df_adds_up_to_what_the_filesystem_used(driver: str, tmp_path: pathlib.Path) -> None:
    archive = tmp_path / "img.tar"
    archive.write_bytes(build_image_archive())
    with loop_filesystem(tmp_path, 1024 * MiB) as fs:
        os.sync()
        before = used_bytes(fs) - diskusage.allocated(fs, set())  # the filesystem's own, and its root dir
        try:
            store = Store(fs / "root", driver, HOST_OPTIONS.get(driver))
        except NotSupported as exc:
            pytest.skip(f"{driver}: {exc}")
        try:
            load(store.images, archive)
            store.containers.create("busybox-demo", name="idle")
            store.containers.create("busybox-demo", name="writer")
            root = store.containers.mount("writer")
            (root / "big").write_bytes(os.urandom(3 * MiB))
            store.containers.umount("writer")
            store.containers.commit("writer", tag="big:1")
            os.sync()
            usage = system_usage(store)
            used = used_bytes(fs) - before
        finally:
            store.shutdown()
    rows = {row.kind: row for row in usage.summary}
    assert usage.total == sum(row.size for row in usage.summary)
    assert abs(usage.total - used) <= max(used // 100, MiB // 4), (usage.total, used, usage.summary)
    images = {u.image.tags[0]: u for u in usage.images}
    assert images["busybox-demo:latest"].unique == 0  # big:1 holds all its layers too
    assert images["big:1"].unique >= 3 * MiB  # vfs: a full copy, its parent's files too
    if driver != "vfs":
        assert images["big:1"].unique < 4 * MiB
    assert images["big:1"].shared == images["busybox-demo:latest"].size
    assert rows["Images"].size == images["big:1"].size  # each layer once
    assert rows["Images"].reclaimable == images["big:1"].unique  # containers use busybox-demo's
    containers = {u.container.name: u for u in usage.containers}
    assert containers["writer"].size >= containers["idle"].size + 3 * MiB
