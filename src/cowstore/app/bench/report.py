"""The bench's outputs: raw results as JSON, a Markdown report with one PNG per experiment,
and a table per experiment on the terminal.

JSON keeps every sample, so a reader can recompute anything; Markdown and the tables
show the median with the min–max range, and the verdicts. Plots need matplotlib (the
`bench` extra); without it the report says so instead of failing.
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

from cowstore.app.bench.experiments import ALL, PEER_EXPERIMENTS, Result
from cowstore.app.bench.stats import fmt, summarize

FORMAT_VERSION = 1
_STATUS_MARK = {
    "confirmed": "✅ confirmed",
    "not confirmed": "❌ not confirmed",
    "not claimed": "➖ not claimed",
    "measured": "📏 measured",
    "met": "🎯 target met",
    "missed": "🔻 target missed",
}


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
                if by_point.get(point):
                    rows.append({"x": point, **summarize(by_point[point]).as_dict(), "samples": by_point[point]})
    return out


def peer_ratios(results: Sequence[Result], peers: Sequence[str], drivers: Sequence[str]) -> list[dict[str, Any]]:
    """cowstore/peer ratios of the medians, for every point both measured."""
    rows = []
    for result in results:
        if result.key not in PEER_EXPERIMENTS:
            continue
        for peer in peers:
            for driver in drivers:
                for metric in result.metrics:
                    for point in result.points:
                        mine = result.median(driver, metric.key, point)
                        theirs = result.median(peer, metric.key, point)
                        if mine is not None and theirs:
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
                                    "ratio": mine / theirs,
                                }
                            )
    return rows


def to_json(run: dict[str, Any], results: Sequence[Result], plots: dict[str, str]) -> dict[str, Any]:
    experiments = []
    for r in results:
        experiments.append(
            {
                "key": r.key,
                "title": r.title,
                "claim": r.claim,
                "x_label": r.x_label,
                "seconds": round(r.seconds, 2),
                "metrics": [{"key": m.key, "label": m.label, "unit": m.unit} for m in r.metrics],
                "points": r.points,
                "series": _series(r),
                "skipped": r.skipped,
                "errors": r.errors,
                "limits": {k: v for k, v in r.limits.items() if v},
                "notes": r.notes,
                "verdicts": [{"subject": v.subject, "status": v.status, "detail": v.detail} for v in r.verdicts],
                "plot": plots.get(r.key),
            }
        )
    return {"format": FORMAT_VERSION, **run, "experiments": experiments}


def _plot(result: Result, path: pathlib.Path) -> bool:
    """One PNG for the experiment: a panel per metric, medians with min–max bars."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    metrics = [m for m in result.metrics if any(m.key in result.samples[s] for s in result.subjects())]
    if not metrics:
        return False
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4), squeeze=False)
    subjects = result.subjects()
    numeric = all(isinstance(p, int) for p in result.points)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for index, subject in enumerate(subjects):
            points = result.measured_points(subject, metric.key)
            stats = [result.summary(subject, metric.key, p) for p in points]
            if not points:
                continue
            med = [s.median for s in stats if s]
            err = [[s.median - s.low for s in stats if s], [s.high - s.median for s in stats if s]]
            if numeric:
                ax.errorbar(points, med, yerr=err, marker="o", capsize=3, label=subject)
            else:
                width = 0.8 / max(len(subjects), 1)
                xs = [result.points.index(p) + (index - (len(subjects) - 1) / 2) * width for p in points]
                ax.bar(xs, med, width, yerr=err, capsize=3, label=subject)
        if numeric:
            values = [p for p in result.points if isinstance(p, int) and p > 0]
            if values and max(values) / min(values) >= 50:
                ax.set_xscale("log")
        else:
            ax.set_xticks(
                range(len(result.points)), [str(p) for p in result.points], rotation=20, ha="right", fontsize=8
            )
        ax.set_title(metric.label, fontsize=10)
        ax.set_xlabel(result.x_label, fontsize=9)
        ax.set_ylabel(metric.unit)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(result.title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_plots(results: Sequence[Result], out: pathlib.Path) -> dict[str, str]:
    plots = {}
    for result in results:
        name = f"{result.key}.png"
        if result.samples and _plot(result, out / name):
            plots[result.key] = name
    return plots


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


def markdown(run: dict[str, Any], results: Sequence[Result], plots: dict[str, str], peers: list[dict[str, Any]]) -> str:
    host = run["host"]
    lines = [
        "# cowstore bench report",
        "",
        f"- Run: {run['created']} (`--scale {run['scale']}`), {run['seconds']:.0f} s in all",
        (
            f"- Host: kernel {host['kernel']}, {host['cpus']} CPUs, {host['memory_gib']} GiB RAM, "
            f"load average at start {host['load_average']}"
        ),
        f"- Backing: {run['backing']}",
        "- Subjects: " + "; ".join(f"**{n}**: {d['description']}" for n, d in run["subjects"].items()),
    ]
    for name, reason in run["unavailable"].items():
        lines.append(f"- Not measured: **{name}**: {reason}")
    lines += ["", "## Verdicts", "", "| experiment | subject | verdict | figures |", "|---|---|---|---|"]
    for r in results:
        for v in r.verdicts:
            lines.append(f"| {r.title} | {v.subject} | {_STATUS_MARK.get(v.status, v.status)} | {v.detail} |")
    for r in results:
        lines += ["", f"## {r.title}", "", f"**Claim:** {r.claim}", "", f"x: {r.x_label}; {r.seconds:.1f} s.", ""]
        if r.key in plots:
            lines += [f"![{r.title}]({plots[r.key]})", ""]
        rows = _table_rows(r)
        if rows:
            lines += ["| " + " | ".join(_HEADERS) + " |", "|" + "---|" * len(_HEADERS)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            lines.append("")
        for v in r.verdicts:
            lines.append(f"- {_STATUS_MARK.get(v.status, v.status)} — **{v.subject}**: {v.detail}")
        for subject, reason in r.skipped.items():
            lines.append(f"- skipped **{subject}**: {reason}")
        for subject, points in r.limits.items():
            for point, reason in points.items():
                lines.append(f"- not measured **{subject}** at {point}: {reason}")
        for subject, error in r.errors.items():
            lines.append(f"- ⚠️ **{subject}** failed {error}")
        lines += [f"- note: {n}" for n in r.notes]
    lines += ["", f"## {len(ALL) + 1}. Peers", ""]
    if peers:
        lines += [
            "Ratios of medians, cowstore / peer (below 1: cowstore is faster or smaller).",
            "",
            "| experiment | metric | x | driver | peer | driver median | peer median | ratio |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {p['experiment']} | {p['metric']} ({p['unit']}) | {p['x']} | {p['driver']} | {p['peer']} | "
            f"{fmt(p['driver_median'])} | {fmt(p['peer_median'])} | {p['ratio']:.2f} |"
            for p in peers
        ]
    else:
        lines.append("No peer measured in this run (`--compare podman,docker`).")
    for name, reason in run["unavailable"].items():
        if name in ("podman", "docker"):
            lines.append(f"- {name}: {reason}")
    return "\n".join(lines) + "\n"


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
        console.print(f"  {_STATUS_MARK.get(v.status, v.status)} [bold]{v.subject}[/]: {v.detail}")
    for subject, reason in result.skipped.items():
        console.print(f"  skipped {subject}: {reason}", style="dim")
    for subject, error in result.errors.items():
        console.print(f"  {subject} failed {error}", style="yellow")


def write_outputs(
    out: pathlib.Path, run: dict[str, Any], results: Sequence[Result], peers: list[dict[str, Any]]
) -> tuple[pathlib.Path, pathlib.Path]:
    """Write report.json, report.md and the PNGs into `out`; return the two report paths."""
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(results, out)
    data = to_json(run, results, plots) | {"peers": peers}
    json_path, md_path = out / "report.json", out / "report.md"
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    md_path.write_text(markdown(run, results, plots, peers))
    return json_path, md_path
