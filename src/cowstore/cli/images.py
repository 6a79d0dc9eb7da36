"""`cowstore image ...`: ls, import, load, save, inspect, history, rm, tag, prune."""

from __future__ import annotations

import json
import sys
from typing import BinaryIO

import click

from cowstore import images as imagelib
from cowstore.cli import verbs
from cowstore.cli.app import app
from cowstore.cli.output import FORMATS, ago, emit_json, progress, table
from cowstore.host.safefile import output_file
from cowstore.images.config import parse_time
from cowstore.images.errors import ArchiveToTerminal
from cowstore.store import Store
from cowstore.units import human_size

# `inspect` output is JSON only; `--format json` is accepted so it works on every command.
JSON_ONLY = click.Choice(["json"])
JSON_ONLY_HELP = "Output format (JSON is the only one for inspect)."


@click.group("image")
def image_group() -> None:
    """Manage images."""


@image_group.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs.")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def image_ls(quiet: bool, fmt: str) -> None:
    """List images."""
    verbs.list_images(app().open(lazy_driver=True), quiet, fmt)


def _open_input(path: str) -> str | BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    return path


@image_group.command("import")
@click.argument("source")
@click.argument("reference", required=False)
@click.option("-m", "--message", default="", help="Commit message for the history entry.")
@click.option("--cmd", "cmd", default=None, help="Default command, as a JSON list or a shell string.")
def image_import(source: str, reference: str | None, message: str, cmd: str | None) -> None:
    """Import a root filesystem tarball (`-` for stdin) as a one-layer image."""
    store = app().store
    command = _parse_cmd(cmd)
    with progress("importing") as update:
        if update:
            update(source, 0, 1)
        if source == "-":
            image = imagelib.import_rootfs(
                store.images, sys.stdin.buffer, "stdin", tag=reference, message=message, cmd=command
            )
        else:
            image = verbs.import_file(store, "", source, reference, message, command)
    click.echo(image.id)


def _parse_cmd(cmd: str | None) -> list[str] | None:
    if cmd is None:
        return None
    if cmd.startswith("["):
        try:
            value = json.loads(cmd)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not a JSON list: {exc}", param_hint="--cmd") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise click.BadParameter("must be a JSON list of strings", param_hint="--cmd")
        return value
    return ["/bin/sh", "-c", cmd]


@image_group.command("load")
@click.option("-i", "--input", "source", default="-", help="Archive or OCI layout directory (default: stdin).")
@click.option("-q", "--quiet", is_flag=True, help="Only print image IDs.")
def image_load(source: str, quiet: bool) -> None:
    """Load images from a docker-save archive or an OCI layout (directory or tar)."""
    store = app().store
    with progress("loading") as update:
        loaded = imagelib.load(store.images, _open_input(source), update)
    verbs.report_loaded(loaded, quiet)


@image_group.command("save")
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--output", default=None, help="Write to this file (OCI directory for oci-dir) instead of stdout.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(imagelib.FORMATS),
    default="docker-archive",
    show_default=True,
    help="docker-archive (docker/podman load), oci-archive (OCI layout tar) or oci-dir.",
)
def image_save(images: tuple[str, ...], output: str | None, fmt: str) -> None:
    """Save images to a tar archive (stdout by default) or an OCI layout directory."""
    store = app().store
    if fmt == "oci-dir":
        if not output:
            raise click.UsageError("--format oci-dir needs -o DIRECTORY")
        with progress("saving") as update:
            imagelib.save(store.images, list(images), output, fmt=fmt, progress=update)
        return
    if output is None:
        if sys.stdout.isatty():
            raise ArchiveToTerminal("cowstore save refuses to write an archive to a terminal; use -o FILE or redirect")
        with progress("saving") as update:
            imagelib.save(store.images, list(images), sys.stdout.buffer, fmt=fmt, progress=update)
        return
    for ref in images:  # fail before creating the file
        store.images.get(ref)
    with output_file(output) as out, progress("saving") as update:
        imagelib.save(store.images, list(images), out, fmt=fmt, progress=update)


def image_details(ref: str) -> dict:
    """`docker image inspect`-shaped facts about one image."""
    return verbs.image_details(app().store, ref)


@image_group.command("inspect")
@click.argument("images", nargs=-1, required=True)
@click.option("--format", "fmt", type=JSON_ONLY, default="json", show_default=True, help=JSON_ONLY_HELP)
def image_inspect(images: tuple[str, ...], fmt: str) -> None:
    """Show details of images as JSON."""
    verbs.inspect_images(app().store, images)  # fmt can only be "json" (see JSON_ONLY)


@image_group.command("history")
@click.argument("image")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.option("--no-trunc", is_flag=True, help="Do not truncate output.")
def image_history(image: str, fmt: str, no_trunc: bool) -> None:
    """Show the history of an image, newest first."""
    store = app().store
    found = store.images.get(image)
    chain = list(reversed(store.layers.chain(found.top_layer))) if found.top_layer else []
    layers = iter(chain)
    rows = []
    for entry in found.config.get("history") or []:
        layer = None if entry.get("empty_layer") else next(layers, None)
        rows.append(
            {
                "Created": entry.get("created", ""),
                "CreatedBy": entry.get("created_by", ""),
                "Size": layer.size if layer else 0,
                "Comment": entry.get("comment", ""),
                "Layer": layer.diff_id if layer else None,
            }
        )
    rows.reverse()
    if fmt == "json":
        emit_json(rows)
        return
    ids = [found.short_id if n == 0 else "<missing>" for n in range(len(rows))]
    created_by = [r["CreatedBy"] if no_trunc or len(r["CreatedBy"]) <= 45 else r["CreatedBy"][:44] + "…" for r in rows]
    table(
        ("IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"),
        [
            (i, ago(parse_time(r["Created"])), c, human_size(r["Size"]), r["Comment"])
            for i, r, c in zip(ids, rows, created_by, strict=True)
        ],
    )


@image_group.command("rm")
@click.argument("images", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Remove even if containers use it or it has several tags.")
def image_rm(images: tuple[str, ...], force: bool) -> None:
    """Remove images (or just the named tag while others remain)."""
    store = app().store
    for ref in images:
        for line in store.images.remove(ref, force=force):
            click.echo(line)
    _drop_kept_blobs(store)


@image_group.command("tag")
@click.argument("source")
@click.argument("target")
def image_tag(source: str, target: str) -> None:
    """Create a tag TARGET that refers to SOURCE."""
    app().store.images.tag(source, target)


@image_group.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
def image_prune(force: bool) -> None:
    """Remove untagged images that no container uses."""
    store = app().store
    if not force:
        click.confirm("This will remove all dangling images. Are you sure you want to continue?", abort=True)
    for image in store.images.images():
        if not image.tags and not store.containers.users_of(image.id):
            for line in store.images.remove(image.id):
                click.echo(line)
    _drop_kept_blobs(store)


def _drop_kept_blobs(store: Store) -> None:
    """Free the registry blobs kept for layers that are now gone (see cowstore.distribution)."""
    from cowstore.distribution import tidy

    tidy(store)
