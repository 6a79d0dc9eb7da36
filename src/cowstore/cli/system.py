"""Top-level commands that are neither image nor container: info, inspect (either), demo, system."""

from __future__ import annotations

import click

from cowstore.cli import verbs
from cowstore.cli.app import app
from cowstore.cli.containers import container_group
from cowstore.cli.output import FORMATS, emit_json, table
from cowstore.units import human_size


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


@click.group("system")
def system_group() -> None:
    """The store as a whole: disk usage (df), prune, reset, and the store service."""


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _share(part: int, whole: int) -> str:
    return f"{human_size(part)} ({part * 100 // whole if whole else 0}%)"


@system_group.command("df")
@click.option("-v", "--verbose", is_flag=True, help="Show every image, container and layer.")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def system_df(verbose: bool, fmt: str) -> None:
    """Disk space of images, containers and layers, each block counted once (they add up)."""
    from cowstore.system.usage import system_usage

    usage = system_usage(app().store)
    if fmt == "json":
        emit_json(usage.as_json())
        return
    rows = [
        (row.kind, _count(row.total), _count(row.active), human_size(row.size), _share(row.reclaimable, row.size))
        for row in usage.summary
    ]
    table(("TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"), [*rows, ("Total", "", "", human_size(usage.total), "")])
    if not verbose:
        return
    click.echo("\nImages space usage:\n")
    table(
        ("REPOSITORY:TAG", "IMAGE ID", "SIZE", "SHARED SIZE", "UNIQUE SIZE", "CONTAINERS"),
        [
            (
                ", ".join(u.image.tags) or "<none>",
                u.image.short_id,
                human_size(u.size),
                human_size(u.shared),
                human_size(u.unique),
                len(u.containers),
            )
            for u in usage.images
        ],
    )
    click.echo("\nContainers space usage:\n")
    table(
        ("CONTAINER ID", "IMAGE", "SIZE", "MOUNTED", "NAMES"),
        [
            (
                u.container.short_id,
                u.container.image_ref,
                human_size(u.size),
                "yes" if u.mounted else "no",
                u.container.name,
            )
            for u in usage.containers
        ],
    )
    click.echo("\nLayers space usage:\n")
    table(
        ("LAYER", "SIZE", "IMAGES", "CONTAINERS"),
        [
            (u.layer.chain_id.removeprefix("sha256:")[:12], human_size(u.size), len(u.images), len(u.containers))
            for u in usage.layers
        ],
    )


@system_group.command("prune")
@click.option(
    "-a", "--all", "all_images", is_flag=True, help="Remove every image no container uses, not just dangling ones."
)
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
def system_prune(all_images: bool, force: bool) -> None:
    """Remove unmounted containers, dangling (-a: unused) images, unused layers and orphan storage."""
    from cowstore.system.prune import system_prune as prune

    if not force:
        images = "all images without at least one container" if all_images else "all dangling images"
        click.confirm(
            "WARNING! This will remove:\n  - all unmounted containers\n"
            f"  - {images}\n  - all layers no image or container uses\n  - driver storage with no record\n"
            "Are you sure you want to continue?",
            abort=True,
        )
    report = prune(app().store, all_images=all_images)
    sections = [
        ("Deleted Containers:", [c.id for c in report.containers]),
        ("Deleted Images:", report.images),
        ("Deleted Layers:", [layer.chain_id for layer in report.layers]),
        ("Deleted orphan storage:", report.orphans),
    ]
    for title, lines in sections:
        if lines:
            click.echo(title)
            for line in lines:
                click.echo(line)
            click.echo()
    click.echo(f"Total reclaimed space: {human_size(report.reclaimed)}")


@system_group.command("reset")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
def system_reset(force: bool) -> None:
    """Release every mount, server and loop device of the store and remove its root."""
    from cowstore.store import default_root
    from cowstore.system.reset import reset

    context = app()
    root = context.root or default_root()
    if not force:
        click.confirm(
            f"WARNING! This will remove every image, container and layer of the store at {root}, "
            "release its mounts, servers and loop devices, and delete the directory.\n"
            "Are you sure you want to continue?",
            abort=True,
        )
    report = reset(root, context.driver, context.storage_opts)
    if report.shutdown_error:
        click.echo(f"cowstore: the store did not shut down ({report.shutdown_error}): released it by force", err=True)
    for pid in report.servers:
        click.echo(f"terminated server {pid}")
    for point in report.mounts:
        click.echo(f"unmounted {point}")
    for device in report.loops:
        click.echo(f"detached {device}")
    click.echo(f"removed {root}")


__all__ = ["container_group", "demo", "info", "inspect", "system_group"]


@system_group.command("service")
@click.option(
    "--socket",
    "address",
    metavar="unix://PATH",
    default=None,
    help="Where to listen [default: ROOT/cowstore.sock, where the hot commands look for it].",
)
def system_service(address: str | None) -> None:
    """Keep the store open and answer the hot commands on a socket, until SIGTERM or SIGINT.

    create, mount, umount, rm, images, ps and inspect are then sent here by `cowstore`
    (like `podman system service`); without a service they run in their own process.
    """
    from cowstore.cli.service import StoreService, default_socket, parse_address

    state = app()
    path = parse_address(address) if address else default_socket(state)
    StoreService(state, path).serve()
