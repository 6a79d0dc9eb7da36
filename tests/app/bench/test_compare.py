"""Reports written after every experiment, rendered from their JSON, and `bench compare` of two."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from click.testing import CliRunner

from cowstore.app.bench import bench_command
from cowstore.app.bench.compare import figure_rows, load, verdict_changes
from cowstore.app.bench.experiments import Context, Result, Verdict
from cowstore.app.bench.experiments.verdicts import claim
from cowstore.app.bench.images import ImageCache
from cowstore.app.bench.report import ReportWriter
from cowstore.app.bench.runner import run_experiment
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.scratch import Scratch
from cowstore.app.bench.stats import side
from tests.app.bench.test_runner import _Fake, _Probe


class _Judged(_Probe):
    def judge(self, result: Result) -> list[Verdict]:
        found = result.paired("fast", "native", "v", 1)
        assert found is not None
        return [claim("fast", True, [side(found, low=1.5)], found.show("x"), found.brief("x"), found)]


def _report(out: pathlib.Path, speed: float, tmp: pathlib.Path) -> dict[str, Any]:
    ctx = Context(Scale.STANDARD, ImageCache(tmp), Scratch(0), log=lambda message: None)
    subjects = [_Fake("fast"), _Fake("native", "native")]
    run = {
        "created": "2026-01-01T00:00:00+00:00",
        "scale": "standard",
        "host": {"kernel": "6.1", "cpus": 2, "memory_gib": 4, "load_average": [0, 0, 0]},
        "backing": "test",
        "subjects": {s.name: {"kind": s.kind, "description": s.name} for s in subjects},
        "unavailable": {},
    }
    writer = ReportWriter(out, run)
    writer.add(run_experiment(_Judged({"native": 1.0, "fast": speed}, beside="native"), subjects, ctx))
    partial = json.loads(writer.json_path.read_text())
    assert partial["complete"] is False and "incomplete: 1 experiments so far" in writer.md_path.read_text()
    writer.write(complete=True)
    return load(writer.json_path)


def test_report_shows_claims_at_a_glance_and_compare_prints_ratios(tmp_path: pathlib.Path) -> None:
    a = _report(tmp_path / "a", 2.0, tmp_path)
    b = _report(tmp_path / "b", 1.0, tmp_path)
    md = (tmp_path / "a" / "report.md").read_text()
    assert "## Claims at a glance" in md and "| Probe: a claim | ✅ 2.02x [" in md
    assert a["complete"] is True and a["experiments"][0]["verdicts"][0]["spread"]["n"] == 3

    rows = figure_rows(a, b)
    fast = [r for r in rows if r["subject"] == "fast" and r["x"] == "1"]
    assert len(fast) == 1 and 0.45 < fast[0]["ratio"] < 0.55 and fast[0]["beyond_noise"]
    assert verdict_changes(a, b) == [
        {
            "experiment": "probe",
            "subject": "fast",
            "a": f"confirmed: {a['experiments'][0]['verdicts'][0]['figure']}",
            "b": f"not confirmed: {b['experiments'][0]['verdicts'][0]['figure']}",
        }
    ]
    args = ["compare", str(tmp_path / "a" / "report.json"), str(tmp_path / "b" / "report.json"), "--changed"]
    result = CliRunner().invoke(bench_command, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "beyond noise" in result.output and "verdicts that changed" in result.output


def test_compare_reads_reports_of_the_first_format_and_refuses_other_files(tmp_path: pathlib.Path) -> None:
    old = {
        "format": 1,
        "experiments": [
            {
                "key": "seq_write",
                "series": {"vfs": {"write_mb_s": [{"x": 512, "median": 200.0, "min": 150.0, "max": 250.0}]}},
                "verdicts": [{"subject": "vfs", "status": "not claimed", "detail": "226 MB/s"}],
            }
        ],
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    rows = figure_rows(load(path), load(path))
    assert rows[0]["ratio"] == 1.0 and not rows[0]["beyond_noise"]
    (tmp_path / "other.json").write_text("[]")
    result = CliRunner().invoke(bench_command, ["compare", str(path), str(tmp_path / "other.json")])
    assert result.exit_code != 0 and "not a report.json of cowstore bench" in str(result.exception)


def test_a_run_cut_short_by_its_time_limit_says_what_stopped_and_what_never_ran(tmp_path: pathlib.Path) -> None:
    ctx = Context(Scale.STANDARD, ImageCache(tmp_path), Scratch(0), log=lambda message: None, deadline=0.0)
    subjects = [_Fake("fast"), _Fake("native", "native")]
    result = run_experiment(_Probe({"native": 1.0, "fast": 2.0}), subjects, ctx)
    run = {
        "created": "2026-01-01T00:00:00+00:00",
        "scale": "full",
        "time_limit_minutes": 40.0,
        "not_run": {"walk": "the time limit (40 min) ran out"},
        "host": {"kernel": "6.1", "cpus": 2, "memory_gib": 4, "load_average": [0, 0, 0]},
        "subjects": {s.name: {"kind": s.kind, "description": s.name} for s in subjects},
    }
    writer = ReportWriter(tmp_path / "out", run)
    writer.add(result)
    data = json.loads(writer.json_path.read_text())
    assert data["experiments"][0]["stopped"].startswith("the time limit ran out in round 1 of 3, before ")
    md = writer.md_path.read_text()
    assert "`--scale full`, `--time-limit 40`" in md and "- Not run: **walk**: the time limit (40 min)" in md
    assert "⏱️ **Stopped early:** the time limit ran out in round 1 of 3" in md
