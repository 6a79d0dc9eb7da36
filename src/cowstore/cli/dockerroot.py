"""`cowstore docker-root ...`: list, import or export what a Docker data root holds.

The data root is only read (mounted read-only where its driver needs a mount), so it
can be a disk taken from another machine, or the root of a driver the running Docker
no longer has.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import click

from cowstore.cli.app import app
from cowstore.cli.output import FORMATS, emit_json, table
from cowstore.dockerroot import DRIVERS, Importer, PoolDevices, Report, Source, export_oci
from cowstore.errors import CowstoreError
from cowstore.units import human_size

_PATH = click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=pathlib.Path))
_DEVICE = click.Path(exists=True, dir_okay=False, path_type=pathlib.Path)


def _source_options(command: Callable[..., None]) -> Callable[..., None]:
    """PATH and what else says how to read it: its driver, and where a devicemapper pool is."""
    for option in (
        click.option("--dm-datadev", type=_DEVICE, help="devicemapper: the pool's data device (dm.datadev)."),
        click.option(
            "--dm-metadatadev", type=_DEVICE, help="devicemapper: the pool's metadata device (dm.metadatadev)."
        ),
        click.option(
            "--source-driver",
            type=click.Choice(DRIVERS),
            default=None,
            help="The data root's driver, when it holds image stores of several.",
        ),
        _PATH,
    ):
        command = option(command)
    return command


def _source(path: pathlib.Path, options: dict[str, Any]) -> Source:
    """The data root, with the pool's devices when given (both, or neither)."""
    metadata, data = options.pop("dm_metadatadev"), options.pop("dm_datadev")
    driver = options.pop("source_driver")
    if (metadata is None) != (data is None):
        raise click.UsageError("give both --dm-metadatadev and --dm-datadev, or neither")
    pool = PoolDevices(metadata, data) if metadata is not None else None
    return Source(path, driver, pool=pool)


class PartialFailure(CowstoreError):
    """Some objects could not be read; the others were handled (the summary says which)."""


@click.group("docker-root")
def docker_root_group() -> None:
    """Read a Docker data root (/var/lib/docker) of any driver: list, import, export."""


def _finish(report: Report) -> None:
    click.echo(report.summary())
    if report.failed:
        raise PartialFailure(f"{len(report.failed)} object(s) could not be read; see the lines marked failed")


def _size(value: int | None) -> str:
    return "-" if value is None else human_size(value)


@docker_root_group.command("ls")
@_source_options
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def docker_root_ls(path: pathlib.Path, fmt: str, **options: Any) -> None:
    """The data root's driver, images (tags, ids, sizes) and containers (names, images, changes)."""
    with _source(path, options) as source:
        listing = source.listing()
    if fmt == "json":
        emit_json(listing)
        return
    click.echo(f"Storage Driver: {listing['Driver']}")
    click.echo()
    rows = []
    for image in listing["Images"]:
        for tag in image["RepoTags"] or ["<none>:<none>"]:
            rows.append((*tag.rpartition(":")[::2], image["Id"][7:19], human_size(image["Size"])))
    table(("REPOSITORY", "TAG", "IMAGE ID", "SIZE"), rows)
    click.echo()
    table(
        ("CONTAINER ID", "NAMES", "IMAGE", "DRIVER", "SIZE"),
        [(c["Id"][:12], c["Name"], c["ImageRef"], c["Driver"], _size(c["SizeRw"])) for c in listing["Containers"]],
    )
    for problem in listing["Problems"]:
        click.echo(f"warning: {problem['Kind']} {problem['Id'][:19]}: {problem['Reason']}", err=True)


@docker_root_group.command("import")
@_source_options
@click.option("--images-only", is_flag=True, help="Leave the containers out.")
@click.option("--dry-run", is_flag=True, help="Read and verify everything, store nothing.")
def docker_root_import(path: pathlib.Path, images_only: bool, dry_run: bool, **options: Any) -> None:
    """Import the data root's images (same ids, tags, exact layers) and containers into this store."""
    store = app().store
    with _source(path, options) as source:
        click.echo(f"reading {path} ({source.driver}) into {store.root} ({store.driver.name})")
        report = Importer(source, store, click.echo, dry_run=dry_run).run(images_only=images_only)
    _finish(report)


@docker_root_group.command("export")
@_source_options
@click.option(
    "--to",
    "target",
    nargs=2,
    type=(click.Choice(["oci-dir"]), click.Path(file_okay=False, path_type=pathlib.Path)),
    required=True,
    metavar="oci-dir DIR",
    help="Write every image into a new OCI layout directory DIR.",
)
def docker_root_export(path: pathlib.Path, target: tuple[str, pathlib.Path], **options: Any) -> None:
    """Export every image of the data root as an OCI layout (for `skopeo copy oci:DIR:TAG ...`)."""
    with _source(path, options) as source:
        report = export_oci(source, target[1], click.echo)
    _finish(report)
