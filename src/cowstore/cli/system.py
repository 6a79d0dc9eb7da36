"""Top-level commands that are neither image nor container: info, inspect (either), demo."""

from __future__ import annotations

import click

from cowstore.cli import verbs
from cowstore.cli.app import app
from cowstore.cli.containers import container_group
from cowstore.cli.output import FORMATS, emit_json, table


@click.command("info")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def info(fmt: str) -> None:
    """Store root, driver status, counts and warnings (like `docker info`)."""
    details = app().store.info()
    if fmt == "json":
        emit_json(details)
        return
    click.echo(f"Containers: {details['Containers']}")
    click.echo(f" Mounted: {details['ContainersMounted']}")
    click.echo(f"Images: {details['Images']}")
    click.echo(f"Layers: {details['Layers']}")
    click.echo(f"Snapshots: {details['Snapshots']}")
    click.echo(f"Storage Driver: {details['Driver']}")
    for key, value in details["DriverStatus"]:
        click.echo(f"  {key}: {value}")
    click.echo(f"Cowstore Root Dir: {details['Root']}")
    click.echo(f"Backing Filesystem: {details['BackingFilesystem']}")
    for warning in details["Warnings"]:
        click.echo(warning, err=True)


@click.command("inspect")
@click.argument("objects", nargs=-1, required=True)
@click.option(
    "--type", "kind", type=click.Choice(["container", "image"]), default=None, help="Only look for this kind."
)
@click.option("--format", "fmt", type=click.Choice(["json"]), default="json", show_default=True)
def inspect(objects: tuple[str, ...], kind: str | None, fmt: str) -> None:
    """Details of containers or images as JSON (containers are looked up first)."""
    verbs.inspect(app().store, objects, kind)


@click.command("demo")
@click.option("-n", "--containers", "count", default=100, show_default=True, help="Containers to create.")
@click.option("--keep", is_flag=True, help="Keep the demo's temporary store instead of deleting it.")
def demo(count: int, keep: bool) -> None:
    """Build a busybox image, create many containers, check the claims of "Deep dive into Docker storage drivers".

    Runs in a temporary store under /var/tmp (under --root when given) and removes it.
    """
    from cowstore.app.demo import run

    context = app()
    run(
        driver=context.driver,
        storage_opts=context.storage_opts,
        count=count,
        keep=keep,
        root=context.root,
        echo=click.echo,
        table=table,
    )


__all__ = ["container_group", "demo", "info", "inspect"]
