"""`cowstore bench --quick` on vfs and overlay2 writes a well-formed JSON and report (no timings); the
baselines of other drivers run and clean up; scales."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pathlib
import shutil

import pytest
from click.testing import CliRunner

from cowstore.app.bench import bench_command
from cowstore.app.bench.baselines import BASELINES
from cowstore.app.bench.experiments import ALL, Context
from cowstore.app.bench.experiments.container_cost import ContainerCost
from cowstore.app.bench.experiments.seq_write import SeqWrite
from cowstore.app.bench.images import ImageCache
from cowstore.app.bench.runner import run_experiment
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.scratch import Scratch
from cowstore.app.bench.subjects import NativeSubject
from cowstore.host import loop, mounts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the bench mounts a loop-backed scratch store: needs root")


def _leftovers(base: pathlib.Path) -> list[str]:
    """Mounts, loop devices and processes of the scratch space `base` (other processes' are not counted)."""
    devices = [
        str(d)
        for d in pathlib.Path("/sys/block").glob("loop*")
        if (loop.backing_file(d.name) or "").startswith(f"{base}/")
    ]
    servers = []  # the registries of pull and push keep their config in the scratch space
    for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if f"{base}/".encode() in cmdline.read_bytes():
                servers.append(str(cmdline.parent))
    return mounts.mounts_under(base) + devices + servers


def test_quick_bench_writes_json_and_report(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "report"
    scratches: list[Scratch] = []
    enter = Scratch.__enter__
    monkeypatch.setattr(Scratch, "__enter__", lambda self: scratches.append(self) or enter(self))
    args = ["--quick", "--driver", "vfs", "--driver", "overlay2", "--out", str(out)]
    result = CliRunner().invoke(bench_command, args)
    assert result.exit_code == 0, result.output
    assert not _leftovers(scratches[0].base), "the bench left mounts, loop devices or servers behind"
    assert not scratches[0].base.exists()

    data = json.loads((out / "report.json").read_text())
    assert data["scale"] == "quick"
    assert {"vfs", "native"} <= set(data["subjects"])
    assert "overlay2" in data["subjects"] or "overlay2" in data["unavailable"]
    keys = [e["key"] for e in data["experiments"]]
    assert keys[:2] == ["container_cost", "copy_up"] and "btrfs_chunks" in keys
    cost = data["experiments"][0]
    assert not cost["errors"]
    for point in cost["series"]["vfs"]["time_ms"]:
        assert point["min"] <= point["median"] <= point["max"] and point["n"] == len(point["samples"])
    statuses = ("confirmed", "not confirmed", "inconclusive")
    assert any(v["subject"] == "vfs" and v["status"] in statuses and v["figure"] for v in cost["verdicts"])
    assert data["complete"] is True and data["calibration"]["probes"] >= len(keys)
    seq = data["experiments"][keys.index("seq_write")]
    natives = seq["series"]["native"]["write_mb_s"][0]
    assert set(natives["beside"]) == {s for s in seq["series"] if s != "native"}  # native sampled beside each
    checks = [v for v in seq["verdicts"] if v["kind"] == "check"]
    assert {v["subject"] for v in checks} == {"vfs", "overlay2"} & set(seq["series"])
    assert "thin pools are devicemapper's" in data["experiments"][keys.index("thin_pool")]["skipped"]["vfs"]
    assert "vfs" in data["experiments"][keys.index("walk")]["series"]
    edges = keys.index("cli")
    names = ["cli", "import", "load", "commit", "save", "pull", "push"]
    assert keys[edges : edges + len(names)] == names
    for edge in data["experiments"][edges : edges + len(names)]:  # the CLI of overlay2 and the peers only
        assert "vfs" in edge["skipped"] and not edge["errors"], edge["errors"]
    containerd = data["experiments"][keys.index("containerd")]
    assert set(containerd["skipped"]) | set(containerd["series"]) == {"overlayfs", "cowstore-overlay2"}
    assert not containerd["errors"], containerd["errors"]
    if containerd["series"]:  # containerd installed: both ran, the target judged on paired rounds
        assert {v["subject"] for v in containerd["verdicts"] if v["kind"] == "target"} == {"cowstore-overlay2"}
        assert containerd["series"]["cowstore-overlay2"]["per_s"][0]["median"] > 0
    if "overlay2" in data["subjects"]:  # overlay2's baselines ran in their experiments only
        deep = data["experiments"][keys.index("deep_layers")]
        assert "overlayfs" in deep["series"] and not deep["errors"]
        assert "overlayfs" not in data["experiments"][0]["series"]
        assert "overlay2@xfs" in data["subjects"] or "overlay2@xfs" in data["unavailable"]
        assert {"overlay2", "overlay2+service"} <= set(data["experiments"][edges]["series"])  # cli, both ways
        imported = data["experiments"][keys.index("import")]["series"]["overlay2"]
        assert {"ms", "tar_ms", "rss_mib"} <= set(imported)
        for key in ("pull", "push"):  # from a registry on loopback, and to one
            assert {"ms", "rss_mib"} <= set(data["experiments"][keys.index(key)]["series"]["overlay2"])

    report = (out / "report.md").read_text()
    assert report.startswith("# cowstore bench report") and "`--scale quick`" in report
    assert "## Claims at a glance" in report and "- Calibration: the backing itself" in report
    for experiment in data["experiments"]:
        assert f"## {experiment['title']}" in report
        if importlib.util.find_spec("matplotlib") is not None and experiment["series"]:
            assert experiment["plot"] and (out / experiment["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baselines_of_devicemapper_and_btrfs_run_and_leave_nothing() -> None:
    """loop-lvm, loop-dio and btrfs-plain in experiment 4, btrfs-cli in experiment 1, without their drivers."""
    wanted = ["loop-lvm", "loop-dio"] + (["btrfs-plain", "btrfs-cli"] if shutil.which("mkfs.btrfs") else [])
    with Scratch(3 * 2**30) as scratch:
        ctx = Context(Scale.QUICK, ImageCache(scratch.path("images")), scratch, log=lambda message: None)
        subjects = [NativeSubject(scratch.path("native"))]
        try:
            subjects += [BASELINES[name].open(scratch) for name in wanted]
            results = [run_experiment(experiment, subjects, ctx) for experiment in (SeqWrite(), ContainerCost())]
        finally:
            for subject in reversed(subjects):
                subject.close()
    assert not _leftovers(scratch.base) and not scratch.base.exists()
    seq, cost = results
    assert not seq.errors and not cost.errors
    assert {"native", "loop-lvm", "loop-dio"} <= set(seq.subjects())
    assert all(seq.median(s, "cold_mb_s", 64) for s in seq.subjects())
    if "btrfs-cli" in wanted:
        assert cost.subjects() == ["btrfs-cli"] and cost.median("btrfs-cli", "disk_kib", 5) is not None


def test_adjtimex_readings_are_parsed_to_milliseconds() -> None:
    """The docker copy-up figure comes from busybox adjtimex output printed inside the container."""
    from cowstore.app.bench.experiments.copy_up import _adjtimex_ms

    one = (
        "    mode:         0\n    time.tv_sec:  100\n    time.tv_usec: 250\n"
        "    return value: 5 (clock not synchronized)\n"
    )
    two = one.replace("250", "1250").replace("100", "101")
    assert _adjtimex_ms(one + two) == [100_000.25, 101_001.25]


def test_full_scale_has_the_largest_sizes_and_quick_is_smallest() -> None:
    """Without running: `full` reaches 1000 containers, 1 GiB copy-up and 500 layers; no scale shrinks a point set."""
    points = {e.key: {scale: e.points(scale) for scale in Scale} for e in ALL}
    assert max(points["container_cost"][Scale.FULL]) == 1000
    assert max(points["copy_up"][Scale.FULL]) == 1024
    assert max(points["deep_layers"][Scale.FULL]) == 500
    assert points["deep_layers"][Scale.STANDARD] == [1, 16, 64, 128]
    for key, by_scale in points.items():
        numeric = {s: [p for p in ps if isinstance(p, int)] for s, ps in by_scale.items()}
        if numeric[Scale.QUICK]:
            assert max(numeric[Scale.QUICK]) <= max(numeric[Scale.STANDARD]) <= max(numeric[Scale.FULL]), key


def test_quick_contradicting_scale_is_refused() -> None:
    result = CliRunner().invoke(bench_command, ["--quick", "--scale", "full"])
    assert result.exit_code == 2 and "--quick contradicts --scale full" in result.output
