"""The bench's outputs: raw results as JSON, a Markdown report with one PNG per experiment,
and a table per experiment on the terminal.

JSON keeps every sample with its round, so a reader can recompute anything (`bench
compare` reads it back); Markdown (`markdown.py`) and the tables show the median with
the min–max range, and the verdicts with the spread they rest on. The report is written
again after every experiment, marked incomplete until the run ends: a run of hours that
is stopped still leaves what it measured.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from cowstore.app.bench import markdown
from cowstore.app.bench.experiments import PEER_EXPERIMENTS, Result, Verdict
from cowstore.app.bench.markdown import mark
from cowstore.app.bench.plots import write_plot
from cowstore.app.bench.stats import fmt, summarize

FORMAT_VERSION = 2


def host_facts() -> dict[str, Any]:
    with open("/proc/meminfo") as fh:
        mem_kib = int(fh.readline().split()[1])
    return {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def _series(result: Result) -> dict[str, dict[str, list[dict[str, Any]]]]:
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for subject, metrics in result.samples.items():
        for metric, by_point in metrics.items():
            rows = out.setdefault(subject, {}).setdefault(metric, [])
            for point in result.points:
                samples = by_point.get(point)
                if not samples:
                    continue
                values = [s.value for s in samples]
                row: dict[str, Any] = {"x": point, **summarize(values).as_dict(), "samples": values}
                row["rounds"] = [s.round for s in samples]
                if any(s.beside for s in samples):
                    row["beside"] = [s.beside for s in samples]
                rows.append(row)
    return out


def peer_ratios(results: Sequence[Result], peers: Sequence[str], drivers: Sequence[str]) -> list[dict[str, Any]]:
    """cowstore/peer ratios, paired round by round, for every point both measured."""
    rows = []
    for result in results:
        if result.key not in PEER_EXPERIMENTS:
            continue
        for peer in peers:
            for driver in drivers:
                for metric in result.metrics:
                    for point in result.points:
                        found = result.paired(driver, peer, metric.key, point)
                        mine, theirs = result.median(driver, metric.key, point), result.median(peer, metric.key, point)
                        if found is None or mine is None or theirs is None:
                            continue
                        rows.append(
                            {
                                "experiment": result.key,
                                "metric": metric.key,
                                "unit": metric.unit,
                                "x": point,
                                "driver": driver,
                                "peer": peer,
                                "driver_median": mine,
                                "peer_median": theirs,
                                "ratio": found.median,
                                "spread": found.as_dict(),
                            }
                        )
    return rows


def verdict_json(verdict: Verdict) -> dict[str, Any]:
    return {
        "subject": verdict.subject,
        "kind": verdict.kind,
        "status": verdict.status,
        "figure": verdict.figure,
        "detail": verdict.detail,
        "spread": verdict.spread.as_dict() if verdict.spread else None,
    }


def result_json(r: Result, plot: str | None) -> dict[str, Any]:
    calibration = summarize(r.calibration).as_dict() if r.calibration else None
    return {
        "key": r.key,
        "title": r.title,
        "claim": r.claim,
        "x_label": r.x_label,
        "seconds": round(r.seconds, 2),
        "rounds": r.rounds,
        "stopped": r.stopped,
        "calibration_write_mb_s": calibration,
        "metrics": [{"key": m.key, "label": m.label, "unit": m.unit} for m in r.metrics],
        "points": r.points,
        "series": _series(r),
        "skipped": r.skipped,
        "errors": r.errors,
        "limits": {k: v for k, v in r.limits.items() if v},
        "notes": r.notes,
        "verdicts": [verdict_json(v) for v in r.verdicts],
        "plot": plot,
    }


def _table_rows(result: Result) -> list[list[str]]:
    rows = []
    for subject in result.subjects():
        for metric in result.metrics:
            for point in result.measured_points(subject, metric.key):
                s = result.summary(subject, metric.key, point)
                assert s is not None
                rows.append(
                    [
                        subject,
                        f"{metric.label} ({metric.unit})",
                        str(point),
                        fmt(s.median),
                        f"{fmt(s.low)} – {fmt(s.high)}",
                        str(s.count),
                    ]
                )
    return rows


_HEADERS = ["subject", "metric", "x", "median", "min – max", "n"]


def print_result(console: Console, result: Result) -> None:
    rows = _table_rows(result)
    console.print(f"[bold]{result.title}[/] — {result.claim}")
    if rows:
        table = Table()
        for header in _HEADERS:
            table.add_column(header, justify="right" if header in ("median", "n") else "left")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for v in result.verdicts:
        console.print(f"  {mark(v.status)} [bold]{v.subject}[/]: {v.detail}")
    for subject, reason in result.skipped.items():
        console.print(f"  skipped {subject}: {reason}", style="dim")
    for subject, error in result.errors.items():
        console.print(f"  {subject} failed {error}", style="yellow")


class ReportWriter:
    """report.json, report.md and the PNGs in `out`, written again after each experiment."""

    def __init__(self, out: pathlib.Path, run: dict[str, Any]) -> None:
        self.out = out
        self.run = run
        self.results: list[Result] = []
        self.plots: dict[str, str] = {}
        out.mkdir(parents=True, exist_ok=True)
        self.json_path, self.md_path = out / "report.json", out / "report.md"

    def add(self, result: Result) -> None:
        self.results.append(result)
        plot = write_plot(result, self.out)
        if plot:
            self.plots[result.key] = plot
        self.write(complete=False)

    def write(self, *, complete: bool) -> None:
        experiments = [result_json(r, self.plots.get(r.key)) for r in self.results]
        data = {"format": FORMAT_VERSION, "complete": complete, **self.run, "experiments": experiments}
        kinds = {name: d["kind"] for name, d in self.run.get("subjects", {}).items()}
        peers = [n for n, k in kinds.items() if k == "peer"]
        data["peers"] = peer_ratios(self.results, peers, [n for n, k in kinds.items() if k == "driver"])
        self._replace(self.json_path, json.dumps(data, indent=1) + "\n")
        self._replace(self.md_path, markdown.render(data))

    @staticmethod
    def _replace(path: pathlib.Path, text: str) -> None:
        """Write `text` beside `path`, then rename it over: a reader never sees half a report."""
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(text)
        partial.replace(path)
