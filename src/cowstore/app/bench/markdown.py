"""report.md, rendered from the data of report.json alone (so any stored report can be rendered
again): the run and its calibration, the claims at a glance (one row per claim, one column
per driver and peer), the checks, every verdict, then one section per experiment and the
peer ratios."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cowstore.app.bench.stats import Spread, fmt

_HEADERS = ["subject", "metric", "x", "median", "min – max", "n"]
STATUS_MARK = {
    "confirmed": "✅ confirmed",
    "not confirmed": "❌ not confirmed",
    "inconclusive": "❔ inconclusive",
    "not claimed": "➖ not claimed",
    "measured": "📏 measured",
    "met": "🎯 target met",
    "missed": "🔻 target missed",
    "within noise": "✔️ within noise",
    "outside noise": "⚠️ outside noise",
}


def mark(status: str) -> str:
    return STATUS_MARK.get(status, status)


def _spread(data: Mapping[str, Any]) -> Spread:
    return Spread(data["median"], data["low"], data["high"], data["n"], data["confidence"])


def _range(data: Mapping[str, Any] | None, unit: str) -> str:
    if not data:
        return "none"
    return f"{fmt(data['median'])}{unit} median, {fmt(data['min'])}–{fmt(data['max'])}{unit} min–max"


def calibration_line(calibration: Mapping[str, Any] | None) -> str:
    """The backing's own throughput over the run, and the noise of two probes back to back."""
    if not calibration:
        return "- Calibration: no probe ran."
    pairs = calibration.get("write_mb_s_back_to_back")
    noise = (
        f"; two probes back to back differ by {fmt(pairs['min'])}–{fmt(pairs['max'])}x in write "
        "(the noise a paired I/O ratio carries on this backing)"
        if pairs
        else ""
    )
    return (
        f"- Calibration: the backing itself ({calibration['size_mib']} MiB written + fsync into a plain "
        f"directory, then read cold; twice at the start of each of {calibration['probes']} rounds): "
        f"write {_range(calibration['write_mb_s'], ' MB/s')}; cold read "
        f"{_range(calibration['read_mb_s'], ' MB/s')}{noise}."
    )


def _header(data: Mapping[str, Any]) -> list[str]:
    host = data["host"]
    state = "" if data.get("complete", True) else f" — **incomplete: {len(data['experiments'])} experiments so far**"
    repeat = f", `--repeat {data['repeat']}`" if data.get("repeat", 1) > 1 else ""
    if data.get("time_limit_minutes"):
        repeat += f", `--time-limit {data['time_limit_minutes']:g}`"
    seconds = f", {data['seconds']:.0f} s in all" if "seconds" in data else ""
    lines = [
        "# cowstore bench report",
        "",
        f"- Run: {data['created']} (`--scale {data['scale']}`{repeat}){seconds}{state}",
        (
            f"- Host: kernel {host['kernel']}, {host['cpus']} CPUs, {host['memory_gib']} GiB RAM, "
            f"load average at start {host['load_average']}"
        ),
        f"- Backing: {data.get('backing', 'unknown')}",
        "- Subjects: " + "; ".join(f"**{n}**: {d['description']}" for n, d in data.get("subjects", {}).items()),
    ]
    lines += [f"- Not measured: **{name}**: {reason}" for name, reason in data.get("unavailable", {}).items()]
    lines += [f"- Not run: **{key}**: {reason}" for key, reason in data.get("not_run", {}).items()]
    lines.append(calibration_line(data.get("calibration")))
    return lines


def claims_table(data: Mapping[str, Any], link: str = "") -> list[str]:
    """One row per experiment's claim, one column per driver and peer: the verdict and its figure.

    A subject with no claim verdict shows its verdicts on cowstore's own targets instead:
    the command-line experiments (import, load, pull...) have only those.
    """
    columns = [n for n, d in data.get("subjects", {}).items() if d["kind"] in ("driver", "peer")]
    lines = ["| claim | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for e in data["experiments"]:
        cells = []
        for subject in columns:
            mine = [v for v in e["verdicts"] if v["subject"] == subject and v["figure"]]
            found = [v for v in mine if v["kind"] == "claim"] or [v for v in mine if v["kind"] == "target"]
            cell = "; ".join(f"{mark(v['status']).split()[0]} {v['figure']}" for v in found)
            cells.append(cell or ("skipped" if subject in e["skipped"] else "—"))
        title = f"[{e['title']}]({link}#{_anchor(e['title'])})" if link else e["title"]
        lines.append(f"| {title}: {e['claim']} | " + " | ".join(cells) + " |")
    return lines


def _anchor(title: str) -> str:
    """The anchor GitHub gives a heading."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def _rows(e: Mapping[str, Any]) -> list[str]:
    units = {m["key"]: f"{m['label']} ({m['unit']})" for m in e["metrics"]}
    rows = []
    for subject, metrics in e["series"].items():
        for metric, points in metrics.items():
            for p in points:
                cells = [subject, units.get(metric, metric), str(p["x"]), fmt(p["median"])]
                cells += [f"{fmt(p['min'])} – {fmt(p['max'])}", str(p["n"])]
                rows.append("| " + " | ".join(cells) + " |")
    return rows


def _experiment(e: Mapping[str, Any]) -> list[str]:
    backing = e.get("calibration_write_mb_s")
    during = f"; the backing wrote at {_range(backing, ' MB/s')} during it" if backing else ""
    lines = [
        "",
        f"## {e['title']}",
        "",
        f"**Claim:** {e['claim']}",
        "",
        f"x: {e['x_label']}; {e.get('rounds', '?')} rounds; {e['seconds']:.1f} s{during}.",
        "",
    ]
    if e.get("stopped"):
        lines += [f"⏱️ **Stopped early:** {e['stopped']}; the tables hold every point it reached.", ""]
    if e.get("plot"):
        lines += [f"![{e['title']}]({e['plot']})", ""]
    rows = _rows(e)
    if rows:
        lines += ["| " + " | ".join(_HEADERS) + " |", "|" + "---|" * len(_HEADERS), *rows, ""]
    lines += [f"- {mark(v['status'])} — **{v['subject']}**: {v['detail']}" for v in e["verdicts"]]
    lines += [f"- skipped **{subject}**: {reason}" for subject, reason in e["skipped"].items()]
    for subject, points in e["limits"].items():
        lines += [f"- not measured **{subject}** at {point}: {reason}" for point, reason in points.items()]
    lines += [f"- ⚠️ **{subject}** failed {error}" for subject, error in e["errors"].items()]
    lines += [f"- note: {n}" for n in e["notes"]]
    return lines


def _peers(data: Mapping[str, Any]) -> list[str]:
    lines = ["", "## Peers", ""]
    peers = data.get("peers") or []
    if peers:
        lines += [
            "cowstore / peer, paired round by round: the median ratio and its interval "
            "(below 1: cowstore is faster or smaller).",
            "",
            "| experiment | metric | x | driver | peer | driver median | peer median | ratio |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in peers:
            ratio = _spread(p["spread"]).show("", 2) if p.get("spread") else f"{p['ratio']:.2f}"
            lines.append(
                f"| {p['experiment']} | {p['metric']} ({p['unit']}) | {p['x']} | {p['driver']} | {p['peer']} | "
                f"{fmt(p['driver_median'])} | {fmt(p['peer_median'])} | {ratio} |"
            )
    else:
        lines.append("No peer measured in this run (`--compare podman,docker`).")
    lines += [f"- {n}: {r}" for n, r in data.get("unavailable", {}).items() if n in ("podman", "docker")]
    return lines


def render(data: Mapping[str, Any]) -> str:
    """The whole report.md for the data of a report.json."""
    lines = _header(data)
    lines += ["", "## Claims at a glance", "", *claims_table(data)]
    checks = [(e, v) for e in data["experiments"] for v in e["verdicts"] if v["kind"] == "check"]
    if checks:
        lines += ["", "## Checks", ""]
        lines += [f"- {mark(v['status'])} — **{v['subject']}** ({e['title']}): {v['detail']}" for e, v in checks]
    lines += ["", "## Verdicts", "", "| experiment | subject | verdict | figure |", "|---|---|---|---|"]
    for e in data["experiments"]:
        for v in e["verdicts"]:
            lines.append(f"| {e['title']} | {v['subject']} | {mark(v['status'])} | {v['detail']} |")
    for e in data["experiments"]:
        lines += _experiment(e)
    lines += _peers(data)
    return "\n".join(lines) + "\n"
