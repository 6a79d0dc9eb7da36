"""Soak: eight processes of random load/create/mount/write/cp/commit/rm/rmi on one store.

Each worker runs the CLI in-process (a fresh store handle per command, as separate
`cowstore` invocations would) on its own names and on shared images, so commands race
for the same layers. A command may fail only as a one-line error (exit 1: a name
another worker removed, an image in use); a traceback fails the soak. At the end
`check --verify` is clean, and once the store is shut down nothing of it is mounted,
attached or running. The FUSE server's memory is sampled throughout and must stay flat.

The suite runs 30 seconds per driver; `make soak` runs ten minutes each
(COWSTORE_SOAK_SECONDS=600).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pathlib
import random
import time
import traceback

import pytest
from click.testing import CliRunner

from cowstore.app.demo import build_image_archive
from cowstore.cli import main
from cowstore.errors import NotSupported
from cowstore.host import loop, mounts, service
from cowstore.store import Store
from cowstore.system.reset import reset

from ..images.imagearchives import docker_archive, tar_of
from ..support.drivers import HOST_OPTIONS

WORKERS = 8
SECONDS = float(os.environ.get("COWSTORE_SOAK_SECONDS", "30"))
MiB = 1024 * 1024
RSS_SLACK = 16 * MiB  # a FUSE server's memory may grow this much past its first samples, not more


def _invoke(base: list[str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*base, *args])
    if result.exit_code not in (0, 1) or (result.exception and not isinstance(result.exception, SystemExit)):
        exc = result.exception
        detail = "".join(traceback.format_exception(exc)) if exc else result.output
        raise AssertionError(f"{args}: exit {result.exit_code}\n{detail}")
    if result.exit_code == 1:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("cowstore: "), (args, result.stderr)
    return result.exit_code, result.stdout


def _worker(index: int, base: list[str], work: pathlib.Path, deadline: float, report: pathlib.Path) -> None:
    """Random commands until `deadline`; counts of what ran and failed go to `report`."""
    rng = random.Random(index)
    counts: dict[str, list[int]] = {}
    mine: list[str] = []
    tags: list[str] = []
    serial = 0
    host_file = work / f"host-{index}"
    host_file.write_bytes(os.urandom(256 * 1024))

    def run(op: str, *args: str) -> tuple[int, str]:
        code, out = _invoke(base, *args)
        counts.setdefault(op, [0, 0])[code] += 1
        return code, out

    while time.monotonic() < deadline:
        serial += 1
        op = rng.choice(["load", "create", "create", "write", "write", "cp", "commit", "rm", "rmi"])
        name = f"w{index}-{serial}"
        if op == "load":
            archive = work / f"img-{index}.tar"
            layer = tar_of({f"w{index}/{serial}": os.urandom(rng.randrange(1, 64 * 1024))})
            archive.write_bytes(docker_archive([([layer], [f"w{index}:{serial}"])]))
            if run(op, "load", "-i", str(archive))[0] == 0:
                tags.append(f"w{index}:{serial}")
        elif op == "create":
            image = rng.choice(["busybox-demo", *tags[-3:]])
            if run(op, "create", "--name", name, image)[0] == 0:
                mine.append(name)
        elif op in ("write", "cp") and mine:
            target = rng.choice(mine)
            code, out = run("mount", "mount", target)
            if code == 0:
                try:
                    if op == "write":
                        (pathlib.Path(out.strip()) / f"f{serial}").write_bytes(os.urandom(rng.randrange(1, 256 * 1024)))
                    else:
                        run(op, "cp", str(host_file), f"{target}:/copied-{serial}")
                finally:
                    run("umount", "umount", target)
        elif op == "commit" and mine:
            if run(op, "commit", rng.choice(mine), f"w{index}c:{serial}")[0] == 0:
                tags.append(f"w{index}c:{serial}")
        elif op == "rm" and mine:
            target = mine.pop(rng.randrange(len(mine)))
            run(op, "rm", "-f", target)
        elif op == "rmi" and tags:
            run(op, "rmi", tags.pop(rng.randrange(len(tags))))
    report.write_text(json.dumps(counts))


def _rss(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _servers(root: pathlib.Path) -> list[int]:
    return sorted(service.servers_below(root))


@pytest.mark.parametrize("driver", ["overlay2", "aufs"])
def test_soak(driver: str, tmp_path: pathlib.Path) -> None:
    root = tmp_path / "root"
    opts = HOST_OPTIONS.get(driver, {})
    base = ["--root", str(root), "--driver", driver, "--limit", "min-free-disk=0"]
    base += [item for key, value in opts.items() for item in ("--storage-opt", f"{key}={value}")]
    image = tmp_path / "busybox.tar"
    image.write_bytes(build_image_archive())
    try:
        Store(root, driver, opts).close()
    except NotSupported as exc:
        pytest.skip(f"{driver}: {exc}")
    try:
        _invoke(base, "load", "-i", str(image))
        deadline = time.monotonic() + SECONDS
        ctx = multiprocessing.get_context("fork")
        workers = [
            ctx.Process(target=_worker, args=(i, base, tmp_path, deadline, tmp_path / f"report-{i}.json"))
            for i in range(WORKERS)
        ]
        for worker in workers:
            worker.start()
        samples: list[int] = []
        while any(w.is_alive() for w in workers):
            samples.append(sum(_rss(pid) for pid in _servers(root)))
            time.sleep(1)
        for worker in workers:
            worker.join()
        assert [w.exitcode for w in workers] == [0] * WORKERS
        counts: dict[str, list[int]] = {}
        for i in range(WORKERS):
            for op, (ok, failed) in json.loads((tmp_path / f"report-{i}.json").read_text()).items():
                total = counts.setdefault(op, [0, 0])
                total[0] += ok
                total[1] += failed
        print(f"soak {driver} {SECONDS:g}s: {counts}; server RSS MiB {[round(s / MiB, 1) for s in samples]}")
        assert sum(ok for ok, _ in counts.values()) > WORKERS  # it did work
        code, out = _invoke(base, "check", "--verify")
        assert (code, out) == (0, "store is consistent\n")
        running = [rss for rss in samples if rss]  # from the server's start
        if driver == "aufs":
            early = max(running[: max(3, len(running) // 4)])
            assert running[-1] <= early + RSS_SLACK, samples
        store = Store(root, driver, opts)
        for container in store.containers.containers():
            assert store.containers.mount_count(container) == 0, container.name  # every mount undone
        store.shutdown()
        assert (mounts.mounts_under(root), loop.attached_below(root), _servers(root)) == ([], [], [])
    finally:
        reset(root)
