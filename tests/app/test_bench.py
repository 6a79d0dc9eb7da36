"""`cowstore bench --quick` on vfs and overlay2 writes a well-formed JSON and report (no timings); scales."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib

import pytest
from click.testing import CliRunner

from cowstore.app.bench import bench_command
from cowstore.app.bench.experiments import ALL
from cowstore.app.bench.scale import Scale
from cowstore.host import mounts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the bench mounts a loop-backed scratch store: needs root")


def test_quick_bench_writes_json_and_report(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "report"
    before = set(mounts.mounts_under("/var/tmp"))
    result = CliRunner().invoke(bench_command, ["--quick", "--driver", "vfs", "--driver", "overlay2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert set(mounts.mounts_under("/var/tmp")) == before, "the bench left mounts behind"

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
    assert any(v["subject"] == "vfs" and v["status"] in ("confirmed", "not confirmed") for v in cost["verdicts"])
    assert "thin pools are devicemapper's" in data["experiments"][keys.index("thin_pool")]["skipped"]["vfs"]

    report = (out / "report.md").read_text()
    assert report.startswith("# cowstore bench report") and "`--scale quick`" in report
    for experiment in data["experiments"]:
        assert f"## {experiment['title']}" in report
        if importlib.util.find_spec("matplotlib") is not None and experiment["series"]:
            assert experiment["plot"] and (out / experiment["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_adjtimex_readings_are_parsed_to_milliseconds() -> None:
    """The docker copy-up figure comes from busybox adjtimex output printed inside the container."""
    from cowstore.app.bench.experiments.copy_up import _adjtimex_ms

    one = "    mode:         0\n    time.tv_sec:  100\n    time.tv_usec: 250\n    return value: 5 (clock not synchronized)\n"
    two = one.replace("250", "1250").replace("100", "101")
    assert _adjtimex_ms(one + two) == [100_000.25, 101_001.25]


def test_full_scale_has_the_issues_sizes_and_quick_is_smallest() -> None:
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
