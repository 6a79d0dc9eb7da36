"""`cowstore container ...`: create, ls, mount, umount, diff, commit, export, inspect, rm, prune."""

from __future__ import annotations

import pathlib
import sys

import click

from cowstore.cli import verbs
from cowstore.cli.app import app, parse_opts
from cowstore.cli.images import JSON_ONLY, JSON_ONLY_HELP
from cowstore.cli.output import FORMATS, emit_json, spinner
from cowstore.containers import ContainerStore
from cowstore.errors import space_errors
from cowstore.host.safefile import output_file
from cowstore.images.errors import ArchiveToTerminal
from cowstore.units import human_size


@click.group("container")
def container_group() -> None:
    """Manage containers (storage only: nothing runs)."""


@container_group.command("create")
@click.argument("image")
@click.option("--name", default=None, help="Assign a name to the container.")
@click.option(
    "--storage-opt", "opts", multiple=True, metavar="KEY=VALUE", help="Per-container storage option (size=...)."
)
@click.option("--mount", "mount", is_flag=True, help="Also mount it: prints the id, then the mounted root's path.")
def container_create(image: str, name: str | None, opts: tuple[str, ...], mount: bool) -> None:
    """Create a container's layers from an image; prints its id."""
    verbs.create(app().store, image, name, parse_opts(opts), mount)


@container_group.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only show container IDs.")
@click.option("-a", "--all", "all_", is_flag=True, help="Accepted for Docker compatibility: every container is listed.")
@click.option("-s/-S", "--size/--no-size", "with_size", default=True, show_default=True, help="Compute sizes.")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def container_ls(quiet: bool, all_: bool, with_size: bool, fmt: str) -> None:
    """List containers with the bytes each wrote and its virtual size."""
    verbs.list_containers(app().open(lazy_driver=True), quiet, with_size, fmt)


@container_group.command("mount")
@click.argument("container")
def container_mount(container: str) -> None:
    """Mount a container's root filesystem and print its path (stays mounted until umount)."""
    verbs.mount(app().store, container)


@container_group.command("umount")
@click.argument("containers", nargs=-1, required=True)
def container_umount(containers: tuple[str, ...]) -> None:
    """Release one mount of each container."""
    verbs.umount(app().store, containers)


@container_group.command("diff")
@click.argument("container")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def container_diff(container: str, fmt: str) -> None:
    """Files the container added (A), changed (C) or deleted (D) against its image."""
    changes = app().store.containers.diff(container)
    if fmt == "json":
        emit_json([{"Path": c.path, "Kind": c.kind} for c in changes])
        return
    for change in changes:
        click.echo(f"{change.kind} {change.path}")


@container_group.command("commit")
@click.argument("container")
@click.argument("reference", required=False)
@click.option("-m", "--message", default="", help="Commit message.")
@click.option("-a", "--author", default="", help='Author (e.g. "Jane <jane@example.com>").')
def container_commit(container: str, reference: str | None, message: str, author: str) -> None:
    """Create a new image from a container's changes; prints the image id."""
    with spinner(f"committing {container}"):
        image = app().store.containers.commit(container, tag=reference, message=message, author=author)
    click.echo(image.id)


@container_group.command("export")
@click.argument("container")
@click.option("-o", "--output", default=None, help="Write to a file instead of stdout.")
def container_export(container: str, output: str | None) -> None:
    """Export a container's filesystem as one flat tar archive."""
    store = app().store
    store.containers.get(container)
    if output is None:
        if sys.stdout.isatty():
            raise ArchiveToTerminal(
                "cowstore export refuses to write an archive to a terminal; use -o FILE or redirect"
            )
        store.containers.export(container, sys.stdout.buffer)
        return
    with output_file(output) as out, spinner(f"exporting {container}"):
        store.containers.export(container, out)


@container_group.command("cp")
@click.argument("source")
@click.argument("destination")
def container_cp(source: str, destination: str) -> None:
    """Copy between a container and the host: `cp CONTAINER:PATH HOSTPATH` or `cp HOSTPATH CONTAINER:PATH`.

    Container paths resolve inside the container (its symlinks cannot lead to host files).
    """
    with space_errors(f"cp {source} {destination}"):
        _copy(app().store.containers, source, destination)


def _copy(containers: ContainerStore, source: str, destination: str) -> None:
    from cowstore.containers.cp import copy_in, copy_out

    if ":" in source and not pathlib.Path(source).exists():
        name, _, path = source.partition(":")
        root = containers.mount(name)
        try:
            copy_out(root, path, pathlib.Path(destination))
        finally:
            containers.umount(name)
    elif ":" in destination:
        name, _, path = destination.partition(":")
        root = containers.mount(name)
        try:
            copy_in(pathlib.Path(source), root, path)
        finally:
            containers.umount(name)
    else:
        raise click.UsageError("one of SOURCE and DESTINATION must be CONTAINER:PATH")


@container_group.command("inspect")
@click.argument("containers", nargs=-1, required=True)
@click.option(
    "-s/-S",
    "--size/--no-size",
    "with_size",
    default=True,
    show_default=True,
    help="Include SizeRw and SizeRootFs (--no-size skips walking the container's files).",
)
@click.option("--format", "fmt", type=JSON_ONLY, default="json", show_default=True, help=JSON_ONLY_HELP)
def container_inspect(containers: tuple[str, ...], with_size: bool, fmt: str) -> None:
    """Show details of containers as JSON, including GraphDriver {Name, Data}."""
    verbs.inspect_containers(app().store, containers, with_size)  # fmt can only be "json" (see JSON_ONLY)


@container_group.command("rm")
@click.argument("containers", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Unmount and remove a mounted container.")
def container_rm(containers: tuple[str, ...], force: bool) -> None:
    """Remove containers and their layers."""
    verbs.remove(app().store, containers, force)


@container_group.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
def container_prune(force: bool) -> None:
    """Remove all containers that are not mounted."""
    if not force:
        click.confirm("This will remove all unmounted containers. Are you sure you want to continue?", abort=True)
    removed, reclaimed = app().store.containers.prune()
    if removed:
        click.echo("Deleted Containers:")
        for container in removed:
            click.echo(container.id)
    click.echo(f"Total reclaimed space: {human_size(reclaimed)}")
