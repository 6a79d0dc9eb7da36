"""`cowstore bench`: set up the scratch store, open the subjects, run, report, clean up;
`cowstore bench compare A.json B.json`: the ratios between two reports."""

from __future__ import annotations

import contextlib
import datetime
import functools
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import click
from rich.console import Console

from cowstore.app.bench import report
from cowstore.app.bench.baselines import BASELINES
from cowstore.app.bench.calibration import Calibration, probe_mib
from cowstore.app.bench.compare import compare_command
from cowstore.app.bench.experiments import ALL, Context
from cowstore.app.bench.images import ImageCache
from cowstore.app.bench.peers import PEERS, open_peer
from cowstore.app.bench.runner import run_experiment
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.scratch import Scratch, interrupts_as_exceptions
from cowstore.app.bench.subjects import DriverSubject, NativeSubject, Subject
from cowstore.drivers import driver_names
from cowstore.errors import CowstoreError, NotSupported

GIB = 1024**3
# The sparse ext4 every subject shares: `full` holds 1 GiB copy-up images in every store at
# once and 1000 vfs containers (two copies of the base image each); the baselines' own
# filesystems are sparse files in it too.
_SCRATCH_GIB = {Scale.QUICK: 4, Scale.STANDARD: 32, Scale.FULL: 64}


def _split(values: tuple[str, ...]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


@contextlib.contextmanager
def _subjects(
    scratch: Scratch,
    drivers: list[str],
    baselines: set[str],
    peers: list[str],
    unavailable: dict[str, str],
    log: Callable[[str], None],
) -> Iterator[list[Subject]]:
    """Open every subject that can run here (a baseline only if its driver did); close them
    all, in reverse, on any exit."""
    opened: list[Subject] = []

    def attempt(name: str, opener: Callable[[], Subject]) -> None:
        log(f"opening {name}")
        try:
            opened.append(opener())
        except NotSupported as exc:
            unavailable[name] = str(exc)
        except (CowstoreError, OSError) as exc:
            unavailable[name] = f"failed to open: {exc}"

    try:
        for name in drivers:
            attempt(name, functools.partial(DriverSubject, name, scratch.path(f"store-{name}")))
        opened.append(NativeSubject(scratch.path("native")))
        running = {s.name for s in opened}
        for baseline in BASELINES.values():
            if baseline.name in baselines and baseline.driver in running:
                attempt(baseline.name, functools.partial(baseline.open, scratch))
        for name in peers:
            attempt(name, functools.partial(open_peer, name, scratch))
        yield opened
    finally:
        for subject in reversed(opened):
            try:
                subject.close()
            except (CowstoreError, OSError) as exc:
                log(f"closing {subject.name} failed: {exc}")


@click.group("bench", invoke_without_command=True)
@click.option(
    "--driver",
    "drivers",
    multiple=True,
    metavar="D",
    help="Driver to measure (repeatable, or comma-separated); default: every driver that opens here.",
)
@click.option(
    "--scale",
    "scale_name",
    type=click.Choice([s.value for s in Scale]),
    default=None,
    help="Sizes: quick (under 2 minutes), standard (the default, ~10-25 minutes here), "
    "full (1000 containers, 1 GiB copy-up, 500 layers; hours).",
)
@click.option("--quick", is_flag=True, help="Same as --scale quick.")
@click.option(
    "--compare",
    "compare",
    default="",
    metavar="PEERS",
    help="Peers to measure side by side, e.g. podman,docker (skipped with a reason when absent).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default=pathlib.Path("cowstore-bench"),
    show_default=True,
    help="Directory for report.md, report.json and the plots.",
)
@click.option(
    "--only",
    "only",
    multiple=True,
    metavar="KEY",
    help=f"Run only these experiments ({', '.join(e.key for e in ALL)}).",
)
@click.option(
    "--repeat",
    type=click.IntRange(1, 100),
    default=1,
    show_default=True,
    metavar="N",
    help="N times the rounds of every experiment: narrower intervals where a verdict is inconclusive.",
)
@click.option(
    "--time-limit",
    "time_limit",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="MINUTES",
    help="Start no sample after this long: the experiment in progress is judged on what it reached "
    "and marked stopped, the ones after it are listed as not run (for `full` on a busy machine).",
)
@click.pass_context
def bench_command(
    ctx: click.Context,
    drivers: tuple[str, ...],
    scale_name: str | None,
    quick: bool,
    compare: str,
    out: pathlib.Path,
    only: tuple[str, ...],
    repeat: int,
    time_limit: float | None,
) -> None:
    """Measure the claims of the talk "Deep dive into Docker storage drivers" per driver, on a scratch
    store, against baselines, and write a report (`bench compare A.json B.json`: compare two reports)."""
    if ctx.invoked_subcommand is not None:
        return
    if quick and scale_name not in (None, Scale.QUICK):
        raise click.BadParameter(f"--quick contradicts --scale {scale_name}", param_hint="--quick")
    scale = Scale.QUICK if quick else Scale(scale_name or Scale.STANDARD)
    chosen = _split(drivers) or driver_names()
    for name in chosen:
        if name not in driver_names():
            raise click.BadParameter(
                f"unknown driver {name!r} (known: {', '.join(driver_names())})", param_hint="--driver"
            )
    peers = _split((compare,))
    for name in peers:
        if name not in PEERS:
            raise click.BadParameter(f"unknown peer {name!r} (known: {', '.join(PEERS)})", param_hint="--compare")
    keys = _split(only)
    unknown = [k for k in keys if k not in {e.key for e in ALL}]
    if unknown:
        raise click.BadParameter(
            f"unknown experiment {unknown[0]!r} (known: {', '.join(e.key for e in ALL)})", param_hint="--only"
        )
    experiments = [e for e in ALL if not keys or e.key in keys]
    console = Console()
    started = time.perf_counter()

    def log(message: str) -> None:
        click.echo(f"[{time.perf_counter() - started:6.1f}s] {message}", err=True)

    unavailable: dict[str, str] = {}
    created = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    run: dict[str, Any] = {"created": created, "scale": scale.value, "repeat": repeat, "host": report.host_facts()}
    if time_limit is not None:
        run["time_limit_minutes"] = time_limit
    deadline = None if time_limit is None else time.monotonic() + time_limit * 60
    with interrupts_as_exceptions(), Scratch(_SCRATCH_GIB[scale] * GIB) as scratch:
        log(f"scratch store in {scratch.base} on {scratch.backing}")
        baselines = {name for experiment in experiments for name in experiment.baselines}
        with _subjects(scratch, chosen, baselines, peers, unavailable, log) as subjects:
            descriptions = {s.name: {"kind": s.kind, "description": s.describe()} for s in subjects}
            run |= {"backing": scratch.backing, "subjects": descriptions, "unavailable": unavailable}
            writer = report.ReportWriter(out, run)
            calibration = Calibration(scratch, probe_mib(scale))
            context = Context(scale, ImageCache(scratch.path("images")), scratch, log, repeat, calibration, deadline)
            for experiment in experiments:
                if context.out_of_time():
                    run.setdefault("not_run", {})[experiment.key] = f"the time limit ({time_limit:g} min) ran out"
                    continue
                result = run_experiment(experiment, subjects, context)
                run["calibration"] = calibration.summary()
                writer.add(result)
                report.print_result(console, result)
        run["seconds"] = round(time.perf_counter() - started, 1)
    writer.write(complete=True)
    for name, reason in unavailable.items():
        console.print(f"not measured: {name}: {reason}", style="dim")
    console.print(f"report: {writer.md_path}\nraw results: {writer.json_path}")


bench_command.add_command(compare_command)
