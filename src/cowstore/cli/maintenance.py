"""Maintenance commands: `check`, and the driver-specific `btrfs` and `devicemapper` groups."""

from __future__ import annotations

from typing import Any

import click

from cowstore.cli.app import app
from cowstore.cli.output import FORMATS, emit_json
from cowstore.errors import NotSupported
from cowstore.store import warnings
from cowstore.units import human_size


@click.command("check")
@click.option("--repair", is_flag=True, help="Fix what is found (finish interrupted operations, drop orphans).")
@click.option("--verify", is_flag=True, help="Also re-hash every layer against its diff id (reads all data).")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def check(repair: bool, verify: bool, fmt: str) -> None:
    """Find inconsistencies left by crashes or hand edits; exit 1 if any remain unrepaired."""
    problems = app().store.check(repair=repair, verify_content=verify)
    if fmt == "json":
        emit_json([vars(p) for p in problems])
    elif not problems:
        click.echo("store is consistent")
    for problem in problems if fmt != "json" else []:
        click.echo(str(problem))
    if any(not p.repaired for p in problems):
        raise SystemExit(1)


def _driver_of(name: str) -> Any:
    driver = app().store.driver
    if driver.name != name:
        raise NotSupported(f"this store uses the {driver.name} driver, not {name}")
    return driver


@click.group("btrfs")
def btrfs_group() -> None:
    """btrfs driver maintenance."""


@btrfs_group.command("balance")
@click.option(
    "--dusage",
    default=50,
    show_default=True,
    type=click.IntRange(0, 100),
    help="Relocate data chunks up to this % full.",
)
def btrfs_balance(dusage: int) -> None:
    """Compact half-empty data chunks: the fix for "no space left" while df shows free space."""
    from cowstore.drivers.btrfs import balance

    result = balance(_driver_of("btrfs"), dusage)
    click.echo(
        f"relocated {result['chunks_relocated']} of {result['chunks_considered']} chunks, "
        f"freed {human_size(result['freed_bytes'])} (unallocated {human_size(result['unallocated_before'])} "
        f"-> {human_size(result['unallocated_after'])})"
    )


@click.group("devicemapper")
def devicemapper_group() -> None:
    """devicemapper thin-pool maintenance (the dmsetup and thin_dump equivalents)."""


@devicemapper_group.command("ls")
def devicemapper_ls() -> None:
    """Thin devices of the pool, like `dmsetup ls`."""
    click.echo("ID\tLAYER\tSIZE\tMAPPED BLOCKS\tACTIVE AS")
    for dev in _driver_of("devicemapper").list_devices():
        click.echo(
            f"{dev['id']}\t{dev['layer'] or '-'}\t{human_size(dev['size'])}\t"
            f"{dev['mapped_blocks']}\t{dev['name'] or '-'}"
        )


@devicemapper_group.command("status")
def devicemapper_status() -> None:
    """Pool status, like `dmsetup status` and the devicemapper part of `docker info`."""
    driver = _driver_of("devicemapper")
    status = driver.status()
    for key, value in status:
        click.echo(f"{key}: {value}")
    for warning in warnings(driver.name, status):
        click.echo(warning, err=True)


@devicemapper_group.command("dump")
def devicemapper_dump() -> None:
    """The pool's metadata as thin_dump XML (thin_restore and thin_check accept it)."""
    click.echo(_driver_of("devicemapper").dump(), nl=False)
