"""What both overlay drivers share: how a new layer is put on disk (OverlayHome.sync)."""

from __future__ import annotations

import io
import os
import pathlib

import pytest

from cowstore.drivers.overlay import Overlay2Driver, OverlayDriver
from cowstore.drivers.overlay import home as home_module
from cowstore.host import fsutil

from ...support.drivers import opened
from ...support.tars import layer_tar

pytestmark = pytest.mark.skipif(not fsutil.kernel_has_fs("overlay"), reason="kernel has no overlay filesystem")


def _calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(home_module.fsutil, "fsync", lambda path: calls.append(("fsync", os.fspath(path))))
    monkeypatch.setattr(home_module.fsutil, "syncfs", lambda path: calls.append(("syncfs", os.fspath(path))))
    return calls


@pytest.mark.parametrize(
    "kind,name,options",
    [
        (Overlay2Driver, "overlay2", {}),
        (OverlayDriver, "overlay", {}),
        (OverlayDriver, "overlay", {"layout": "docker"}),
    ],
)
def test_sync_fsyncs_the_new_files_with_data_then_the_home(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, kind: type, name: str, options: dict[str, str]
) -> None:
    """On ext4 and xfs: a new container and its `-init` layer are metadata, but for
    legacy overlay's `lower-id` files in Docker's layout, which get their own fsync (not the
    image's files an `-init` tree links); the home's fsync commits the rest."""
    with opened(kind, name, tmp_path / name, options) as drv:
        if drv.backing not in ("extfs", "xfs"):
            pytest.skip(f"the temp directory is on {drv.backing}")
        drv.create("image", None)
        drv.apply_diff("image", None, io.BytesIO(layer_tar({"bin/sh": (b"#!", 0o755)}, ("bin",))))
        drv.create_rw("image-init", "image")
        drv.fill("image-init", lambda root: (root / ".cowstoreenv").touch())
        drv.create_rw("container", "image-init")
        calls = _calls(monkeypatch)
        drv.sync(["image-init", "container"])
        data = [("fsync", str(drv.home / id / "lower-id")) for id in ("image-init", "container") if options]
        assert calls == [*data, ("fsync", str(drv.home))]


def test_sync_elsewhere_flushes_the_filesystem(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where one fsync may not commit the rest (btrfs logs the fsynced inode alone): syncfs."""
    with opened(Overlay2Driver, "overlay2", tmp_path / "overlay2") as drv:
        drv.create("image", None)
        drv.create_rw("container", "image")
        drv.backing = "btrfs"
        calls = _calls(monkeypatch)
        drv.sync(["container"])
        assert calls == [("syncfs", str(drv.home))]
