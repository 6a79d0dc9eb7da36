"""Power loss at every flush: each state the disk can be left in opens, recovers and verifies.

The store lives on ext4 on a logged disk (tests/support/logwrites.py): its database,
and for devicemapper the thin pool's metadata and data files, reach the disk only
through the log. A short session of load/create/write/commit/rm/rmi is recorded; then
the disk is rebuilt as it stood after each flush, mounted (ext4 replays its journal),
and the store opened on it: `check --verify` must be clean, and every image or
container a command had reported done before that flush must be there.

The suite checks vfs at a dozen evenly spread flushes; COWSTORE_POWER_LOSS=all checks
every flush, on vfs, overlay2 and devicemapper (`make soak` runs it);
COWSTORE_POWER_LOSS=N checks N flushes, COWSTORE_POWER_LOSS_DRIVERS=a,b picks the drivers.
"""

from __future__ import annotations

import json
import os
import pathlib

import pytest
from click.testing import CliRunner

from cowstore.app.bench.loopfs import EXT4
from cowstore.app.demo import build_image_archive
from cowstore.cli import main
from cowstore.host import loop, mounts
from cowstore.store import Store
from cowstore.system.reset import reset

from ..support.drivers import HOST_OPTIONS
from ..support.logwrites import Recorder, flushes, replay

MiB = 1024 * 1024
MODE = os.environ.get("COWSTORE_POWER_LOSS", "12")  # "all", or how many flushes to check
EVERY = MODE == "all"
DRIVERS = os.environ.get("COWSTORE_POWER_LOSS_DRIVERS", "vfs,overlay2,devicemapper" if EVERY else "vfs").split(",")
SAMPLES = 12 if EVERY else int(MODE)
OPTIONS = {"devicemapper": {**HOST_OPTIONS["devicemapper"], "dm.loopdatasize": "96M", "dm.basesize": "32M"}}


def _cli(root: pathlib.Path, driver: str):
    base = ["--root", str(root), "--driver", driver, "--limit", "min-free-disk=0"]
    base += [item for k, v in OPTIONS.get(driver, {}).items() for item in ("--storage-opt", f"{k}={v}")]

    def run(*args: str) -> str:
        result = CliRunner().invoke(main, [*base, *args])
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result.stdout

    return run


def _record(recorder: Recorder, driver: str, image: pathlib.Path) -> list[tuple[int, set[str]]]:
    """Run the session; (log position when it returned, names it made) per command."""
    done: list[tuple[int, set[str]]] = []
    with recorder.mounted("ext4") as fs:
        root = fs / "root"
        cli = _cli(root, driver)
        try:
            steps: list[tuple[tuple[str, ...], set[str]]] = [
                (("load", "-i", str(image)), {"busybox-demo:latest"}),
                (("create", "--name", "c1", "busybox-demo"), {"c1"}),
                # a second container of an image: its record is durable only with its storage
                (("create", "--name", "c3", "busybox-demo"), {"c3"}),
                (("commit", "c1", "c1:1"), {"c1:1"}),
                (("create", "--name", "c2", "c1:1"), {"c2"}),
                (("rm", "-f", "c1"), set()),
                (("commit", "c2", "c2:1"), {"c2:1"}),
            ]
            for args, made in steps:
                if args[0] == "commit":
                    rootfs = pathlib.Path(cli("mount", args[1]).strip())
                    (rootfs / f"{args[1]}-file").write_bytes(os.urandom(256 * 1024))
                    cli("umount", args[1])
                cli(*args)
                done.append((recorder.position(), made))
        finally:
            _shutdown(root, driver)
    return done


def _shutdown(root: pathlib.Path, driver: str) -> None:
    """Release the store's mounts and servers but keep its files (the disk is replayed next)."""
    store = Store(root, driver, OPTIONS.get(driver))
    store.shutdown()


@pytest.mark.parametrize("driver", DRIVERS)
def test_power_loss(driver: str, tmp_path: pathlib.Path) -> None:
    image = tmp_path / "img.tar"
    image.write_bytes(build_image_archive())
    recorder = Recorder(tmp_path, (160 if driver == "devicemapper" else 48) * MiB, EXT4)
    done = _record(recorder, driver, image)
    total = flushes(recorder)
    chosen = set(range(total)) if EVERY else {total * i // SAMPLES for i in range(SAMPLES)} | {total - 1}
    checked = 0
    for position, state in replay(recorder, chosen):
        with loop.attached(state) as device:
            mounts.mount(device, recorder.mountpoint, "ext4")
        root = recorder.mountpoint / "root"
        try:
            if not (root / "cowstore.db").exists():
                assert not any(pos <= position for pos, _ in done)
                continue
            cli = _cli(root, driver)
            assert cli("check", "--verify") == "store is consistent\n", position
            present = {f"{i['Repository']}:{i['Tag']}" for i in json.loads(cli("images", "--format", "json"))}
            present |= {c["Names"] for c in json.loads(cli("ps", "-a", "--format", "json"))}
            removed = {"c1"}  # by a later command
            expected = {name for pos, made in done if pos <= position for name in made} - removed
            assert expected <= present, (position, expected - present)
            checked += 1
        finally:
            try:
                reset(root)
            finally:
                mounts.umount(recorder.mountpoint)
                loop.detach(state)
    print(f"power loss {driver}: {total} flushes recorded, {checked} states opened and verified")
    assert checked >= min(len(chosen), 3)
