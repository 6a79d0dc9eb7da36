"""The promise for FUSE-backed drivers: a killed server costs no fsynced data and no manual repair.

SIGKILL the aufs union server or the devicemapper block server while containers are
mounted: the next `mount` or `umount` of a container notices and mounts it afresh,
`check` reports the other containers' dead mounts, and `check --repair` clears them.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import time

import pytest
from click.testing import CliRunner, Result

from cowstore.app.demo import build_image_archive
from cowstore.cli import main
from cowstore.errors import NotSupported
from cowstore.host import loop, mounts, service
from cowstore.store import Store

from ..support.drivers import HOST_OPTIONS

SOCKETS = {"aufs": "aufs/unionfs/control.sock", "devicemapper": "devicemapper/devicemapper/control.sock"}


@pytest.fixture(params=sorted(SOCKETS))
def cli(request: pytest.FixtureRequest, tmp_path: pathlib.Path):
    driver = request.param
    root = tmp_path / "root"
    opts = [item for key, value in HOST_OPTIONS.get(driver, {}).items() for item in ("--storage-opt", f"{key}={value}")]

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, ["--root", str(root), "--driver", driver, *opts, *args])

    invoke.root = root  # type: ignore[attr-defined]
    invoke.driver = driver  # type: ignore[attr-defined]
    try:
        Store(root, driver, HOST_OPTIONS.get(driver)).close()
    except NotSupported as exc:
        pytest.skip(f"{driver}: {exc}")
    try:
        yield invoke
    finally:
        try:
            Store(root, driver, HOST_OPTIONS.get(driver)).shutdown()
        finally:
            mounts.unmount_all(tmp_path)
            for device in loop.attached_below(tmp_path):
                loop.detach_device(device)


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def kill_server(cli) -> None:
    pid = service.ServiceClient(cli.root / SOCKETS[cli.driver]).call("pid")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while service.running(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_killed_server_mounts_are_re_established_reported_and_repaired(cli, tmp_path: pathlib.Path) -> None:
    archive = tmp_path / "img.tar"
    archive.write_bytes(build_image_archive())
    ok(cli("load", "-i", str(archive)))
    ids = {name: ok(cli("create", "--name", name, "busybox-demo")).strip() for name in ("c1", "c2")}
    path = pathlib.Path(ok(cli("mount", "c1")).strip())
    ok(cli("mount", "c2"))
    with open(path / "synced", "wb") as fh:
        fh.write(b"fsynced before the kill")
        fh.flush()
        os.fsync(fh.fileno())

    kill_server(cli)
    assert pathlib.Path(ok(cli("mount", "c1")).strip()) == path
    assert (path / "synced").read_bytes() == b"fsynced before the kill"
    assert (path / "bin" / "busybox").stat().st_size > 0

    result = cli("check", "--format", "json")
    assert result.exit_code == 1
    assert [(p["kind"], p["subject"]) for p in json.loads(result.stdout)] == [("stale-mount", ids["c2"])]
    assert f"repaired: stale-mount {ids['c2']}" in ok(cli("check", "--repair"))
    assert ok(cli("check", "--verify")) == "store is consistent\n"
    assert json.loads(ok(cli("inspect", "c2")))[0]["MountCount"] == 0

    kill_server(cli)
    ok(cli("umount", "c1"))  # one user left: mounted afresh for it
    assert (path / "synced").read_bytes() == b"fsynced before the kill"
    ok(cli("umount", "c1"))
    assert not mounts.is_mountpoint(path.parent if cli.driver == "devicemapper" else path)
    ok(cli("rm", "c1"))
    ok(cli("rm", "c2"))
    assert ok(cli("check", "--verify")) == "store is consistent\n"
