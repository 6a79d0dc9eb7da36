"""`cowstore bench compare A.json B.json`: two reports side by side, experiment by experiment.

For every figure both reports hold (same experiment key, subject, metric and x) it prints
the medians and B / A; the ranges of the two decide whether the change is beyond noise
(the min–max ranges do not overlap) or within it. Then the verdicts whose status changed,
with their figures. Reports from another machine or another version compare the same
way; reports of format 1 (before rounds were recorded) are read too.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from cowstore.app.bench.stats import fmt
from cowstore.errors import InvalidArgument


class NotAReport(InvalidArgument):
    """The file is not a report.json of `cowstore bench`."""


def load(path: pathlib.Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NotAReport(f"{path}: cannot read a bench report: {exc}") from None
    if not isinstance(data, dict) or "experiments" not in data or "format" not in data:
        raise NotAReport(f"{path}: not a report.json of cowstore bench")
    return data


def _points(experiment: Mapping[str, Any]) -> dict[tuple[str, str, str], Mapping[str, Any]]:
    return {
        (subject, metric, str(p["x"])): p
        for subject, metrics in experiment["series"].items()
        for metric, points in metrics.items()
        for p in points
    }


def _common(a: Mapping[str, Any], b: Mapping[str, Any]) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """The experiments both reports hold, as (A's, B's), in A's order."""
    theirs = {e["key"]: e for e in b["experiments"]}
    for ea in a["experiments"]:
        if ea["key"] in theirs:
            yield ea, theirs[ea["key"]]


def figure_rows(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per figure both reports hold: medians, B / A, and whether the ranges overlap."""
    rows = []
    for ea, eb in _common(a, b):
        pb = _points(eb)
        for key, pa in _points(ea).items():
            other = pb.get(key)
            if other is None:
                continue
            overlap = pa["min"] <= other["max"] and other["min"] <= pa["max"]
            rows.append(
                {
                    "experiment": ea["key"],
                    "subject": key[0],
                    "metric": key[1],
                    "x": key[2],
                    "a": pa["median"],
                    "b": other["median"],
                    "ratio": other["median"] / pa["median"] if pa["median"] else None,
                    "beyond_noise": not overlap,
                }
            )
    return rows


def verdict_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, str]]:
    """Verdicts (experiment, subject, kind, in order) whose status differs between A and B."""
    changes = []
    for ea, eb in _common(a, b):
        mine = _by_subject(ea["verdicts"])
        for key, vb in _by_subject(eb["verdicts"]).items():
            va = mine.get(key)
            if va is not None and va["status"] != vb["status"]:
                changes.append(
                    {
                        "experiment": ea["key"],
                        "subject": key[0],
                        "a": f"{va['status']}: {va.get('figure') or va['detail']}",
                        "b": f"{vb['status']}: {vb.get('figure') or vb['detail']}",
                    }
                )
    return changes


def _by_subject(verdicts: list[Mapping[str, Any]]) -> dict[tuple[str, str, int], Mapping[str, Any]]:
    """Verdicts keyed by subject, kind and rank among that subject's verdicts of that kind."""
    keyed: dict[tuple[str, str, int], Mapping[str, Any]] = {}
    for v in verdicts:
        kind = v.get("kind", "target" if v["status"] in ("met", "missed") else "claim")
        rank = sum(1 for k in keyed if k[:2] == (v["subject"], kind))
        keyed[(v["subject"], kind, rank)] = v
    return keyed


def _title(path: pathlib.Path, data: Mapping[str, Any]) -> str:
    host = data.get("host", {})
    return f"{path} (`--scale {data.get('scale')}`, {data.get('created')}, kernel {host.get('kernel')})"


@click.command("compare")
@click.argument("a", type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path))
@click.argument("b", type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path))
@click.option("--only", "only", multiple=True, metavar="KEY", help="Only these experiments (repeatable).")
@click.option("--changed", is_flag=True, help="Only the figures whose change is beyond noise.")
def compare_command(a: pathlib.Path, b: pathlib.Path, only: tuple[str, ...], changed: bool) -> None:
    """Print B / A for every figure of two bench reports (report.json), per experiment, and the
    verdicts that changed. A change is "beyond noise" when the min–max ranges do not overlap."""
    data_a, data_b = load(a), load(b)
    console = Console()
    console.print(f"A: {_title(a, data_a)}\nB: {_title(b, data_b)}")
    rows = [r for r in figure_rows(data_a, data_b) if (not only or r["experiment"] in only)]
    rows = [r for r in rows if r["beyond_noise"] or not changed]
    for key in dict.fromkeys(r["experiment"] for r in rows):
        table = Table(title=key, title_justify="left")
        for header in ("subject", "metric", "x", "A", "B", "B / A", ""):
            table.add_column(header, justify="right" if header in ("A", "B", "B / A") else "left")
        for r in (r for r in rows if r["experiment"] == key):
            ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "—"
            note = "beyond noise" if r["beyond_noise"] else "within noise"
            table.add_row(r["subject"], r["metric"], r["x"], fmt(r["a"]), fmt(r["b"]), ratio, note)
        console.print(table)
    changes = [c for c in verdict_changes(data_a, data_b) if not only or c["experiment"] in only]
    if changes:
        table = Table(title="verdicts that changed", title_justify="left")
        for header in ("experiment", "subject", "A", "B"):
            table.add_column(header)
        for c in changes:
            table.add_row(c["experiment"], c["subject"], c["a"], c["b"])
        console.print(table)
    elif not rows:
        console.print("no figure in common")
