"""A full disk under every driver: one-line errors, no partial layer, `check` clean, usable once freed.

The store root is a small filesystem of its own (btrfs for the btrfs driver, ext4 for
the others; the thin pool's files sit on it too), filled to its last block by a file
beside the store before each of `load`, `commit`, `cp` and a write inside a mounted
container. Each must fail cleanly; once the file is deleted, nothing of it shows, the
store is consistent, and all of them work.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import subprocess
import threading
import time

import pytest
from click.testing import CliRunner, Result

from cowstore.app.bench.loopfs import BTRFS, EXT4
from cowstore.app.demo import build_image_archive
from cowstore.cli import main
from cowstore.drivers import driver_names
from cowstore.system.reset import reset

from ..images.imagearchives import docker_archive, tar_of
from ..support.drivers import HOST_OPTIONS
from ..support.loopfs import loop_filesystem

MiB = 1024 * 1024
OPTIONS = {**HOST_OPTIONS, "btrfs": {}, "devicemapper": {**HOST_OPTIONS["devicemapper"], "dm.loopdatasize": "1G"}}


class Cli:
    def __init__(self, root: pathlib.Path, driver: str, extra: dict[str, str] | None = None) -> None:
        self.root = root
        opts = {**OPTIONS.get(driver, {}), **(extra or {})}
        self.base = ["--root", str(root), "--driver", driver, "--limit", "min-free-disk=0"]
        self.base += [item for key, value in opts.items() for item in ("--storage-opt", f"{key}={value}")]

    def __call__(self, *args: str) -> Result:
        return CliRunner().invoke(main, [*self.base, *args])

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result.stdout

    def fails(self, *args: str) -> str:
        result = self(*args)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.startswith("cowstore: ") and result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.output
        return result.stderr

    def state(self) -> tuple:
        images = sorted((i["ID"], i["Tag"]) for i in json.loads(self.ok("images", "--format", "json")))
        return images, json.loads(self.ok("system", "df", "--format", "json"))["Summary"][2]["TotalCount"]


def fill(path: pathlib.Path) -> None:
    """Write `path` until the filesystem has not one block left.

    btrfs gives a deleted subvolume's extents back later, in its cleaner thread: wait for
    it, or the room would come back under the next command.
    """
    if (
        subprocess.run(["stat", "-f", "-c", "%T", path.parent], capture_output=True, text=True).stdout.strip()
        == "btrfs"
    ):
        subprocess.run(["btrfs", "subvolume", "sync", path.parent], check=True, capture_output=True)
    os.sync()  # btrfs gives freed extents back at its next commit
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while _write_until_full(fd):  # btrfs gives back what it reserved for writeback at fsync
            os.fsync(fd)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_until_full(fd: int) -> bool:
    """Append to `fd` until ENOSPC; whether anything could be written."""
    wrote = False
    for chunk in (MiB, 64 * 1024, 4096):
        block = os.urandom(chunk)  # btrfs would compress nothing anyway; no zero-block tricks
        while True:
            try:
                os.write(fd, block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
            wrote = True
    return wrote


def write_inside(path: pathlib.Path, size: int) -> None:
    with open(path, "wb") as fh:
        fh.write(os.urandom(size))
        fh.flush()
        os.fsync(fh.fileno())


@pytest.mark.parametrize("driver", driver_names())
def test_full_disk(driver: str, tmp_path: pathlib.Path) -> None:
    image = tmp_path / "img.tar"
    image.write_bytes(build_image_archive())
    big = tmp_path / "big.tar"
    big.write_bytes(docker_archive([([tar_of({"blob": os.urandom(8 * MiB)})], ["big:1"])]))
    host_file = tmp_path / "host-file"
    host_file.write_bytes(os.urandom(4 * MiB))
    mkfs = BTRFS if driver == "btrfs" else EXT4
    with loop_filesystem(tmp_path, 264 * MiB, mkfs) as fs:
        cli = Cli(fs / "root", driver)
        try:
            result = cli("load", "-i", str(image))
            if result.exit_code != 0 and "NotSupported" in repr(result.exception):
                pytest.skip(str(result.exception))
            cli.ok("create", "--name", "c1", "busybox-demo")
            rootfs = pathlib.Path(cli.ok("mount", "c1").strip())
            write_inside(rootfs / "before", MiB)
            before = cli.state()
            filler = fs / "filler"
            for command in (("load", "-i", str(big)), ("commit", "c1", "c1:1"), ("cp", str(host_file), "c1:/copied")):
                fill(filler)
                assert cli.ok("check") == "store is consistent\n"  # on the reserve the store gives up
                assert "space" in cli.fails(*command).lower()
                filler.unlink()
                assert cli.state() == before  # nothing half-stored shows, and the reserve is back
            fill(filler)
            with pytest.raises(OSError) as written:
                write_inside(rootfs / "during", 8 * MiB)
            assert written.value.errno in (errno.ENOSPC, errno.EIO)
            filler.unlink()
            assert cli.ok("check", "--verify") == "store is consistent\n"
            cli.ok("umount", "c1")  # a filesystem that saw write errors starts afresh
            rootfs = pathlib.Path(cli.ok("mount", "c1").strip())
            write_inside(rootfs / "after", 8 * MiB)
            cli.ok("cp", str(host_file), "c1:/copied")
            assert (rootfs / "copied").read_bytes() == host_file.read_bytes()
            cli.ok("load", "-i", str(big))
            cli.ok("commit", "c1", "c1:1")
            cli.ok("umount", "c1")
            assert cli.ok("check", "--verify") == "store is consistent\n"
        finally:
            reset(cli.root)


@pytest.mark.parametrize("policy", ["error", "queue"])
def test_thin_pool_full(policy: str, tmp_path: pathlib.Path) -> None:
    """A thin pool out of data blocks: `error` fails the write at once, `queue` holds it until the pool grows."""
    image = tmp_path / "img.tar"
    image.write_bytes(build_image_archive())
    pool = {"dm.loopdatasize": "112M", "dm.basesize": "128M", "dm.min_free_space": "0%", "dm.no_space_policy": policy}
    cli = Cli(tmp_path / "root", "devicemapper", pool)
    try:
        result = cli("load", "-i", str(image))
        if result.exit_code != 0 and "NotSupported" in repr(result.exception):
            pytest.skip(str(result.exception))
        for name in ("a", "b"):
            cli.ok("create", "--name", name, "busybox-demo")
        write_inside(pathlib.Path(cli.ok("mount", "a").strip()) / "fill", 40 * MiB)
        rootfs = pathlib.Path(cli.ok("mount", "b").strip())
        if policy == "error":
            with pytest.raises(OSError) as written:
                write_inside(rootfs / "over", 80 * MiB)
            assert written.value.errno in (errno.ENOSPC, errno.EIO)
            assert "space" in cli.fails("commit", "b", "b:1").lower()
            assert cli.ok("check", "--verify") == "store is consistent\n"  # no half-written layer
            cli.ok("rm", "-f", "a")
            cli.ok("umount", "b")  # a filesystem that saw write errors starts afresh
            rootfs = pathlib.Path(cli.ok("mount", "b").strip())
            (rootfs / "over").unlink(missing_ok=True)  # its inode may never have reached the disk
            # The pool keeps a deleted file's blocks until the filesystem discards them, as
            # dm-thin does: Docker's remedy is fstrim, once the deletion is committed
            # (blocks freed in an open journal transaction cannot be trimmed yet).
            os.sync()
            subprocess.run(["fstrim", str(rootfs)], check=True, capture_output=True)
            write_inside(rootfs / "over", 24 * MiB)
            result = cli("commit", "b", "b:1")
            assert result.exit_code == 0, result.output
        else:
            failures: list[BaseException] = []

            def write() -> None:
                try:
                    write_inside(rootfs / "over", 80 * MiB)
                except BaseException as exc:  # reported by the assertion below
                    failures.append(exc)

            writer = threading.Thread(target=write)
            writer.start()
            time.sleep(3)
            assert writer.is_alive()  # queued, not failed
            # Docker's remedy: grow the pool's data file. The waiting write takes the new blocks.
            data = cli.root / "devicemapper" / "devicemapper" / "data"
            os.truncate(data, data.stat().st_size + 64 * MiB)
            writer.join(timeout=60)
            assert not writer.is_alive() and not failures, failures
            assert (rootfs / "over").stat().st_size == 80 * MiB
        cli.ok("umount", "b")
        assert cli.ok("check", "--verify") == "store is consistent\n"
    finally:
        reset(cli.root)
