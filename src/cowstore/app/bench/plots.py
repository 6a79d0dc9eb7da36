"""One PNG per experiment: a panel per metric, the median of each point with its min–max range.

Plots need matplotlib (the `bench` extra); without it the report says so instead of failing.
"""

from __future__ import annotations

import pathlib

from cowstore.app.bench.experiments import Result


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


def write_plot(result: Result, out: pathlib.Path) -> str | None:
    """The file name of `result`'s plot written into `out`, or None (no samples, no matplotlib)."""
    name = f"{result.key}.png"
    return name if result.samples and _plot(result, out / name) else None
