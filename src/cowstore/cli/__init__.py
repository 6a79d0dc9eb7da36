"""The `cowstore` command line (click): image and container groups plus Docker's shortcuts."""

from __future__ import annotations

import pathlib
import sqlite3

import click

from cowstore.archive import Limits
from cowstore.bench import bench_command
from cowstore.cli.app import App, parse_opts
from cowstore.cli.containers import (
    container_commit,
    container_cp,
    container_create,
    container_diff,
    container_export,
    container_group,
    container_ls,
    container_mount,
    container_rm,
    container_umount,
)
from cowstore.cli.images import (
    image_group,
    image_history,
    image_import,
    image_load,
    image_ls,
    image_rm,
    image_save,
    image_tag,
)
from cowstore.cli.maintenance import btrfs_group, check, devicemapper_group
from cowstore.cli.system import demo, info, inspect
from cowstore.errors import CowstoreError, InvalidOption


class _Main(click.Group):
    """Turns cowstore errors into one line on stderr and exit 1 (a traceback with --debug)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (CowstoreError, OSError, sqlite3.Error) as exc:
            if ctx.params.get("debug"):
                raise
            message = str(exc) if isinstance(exc, CowstoreError) else f"{type(exc).__name__}: {exc}"
            click.echo(f"cowstore: {message}", err=True)
            ctx.exit(1)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root", type=click.Path(file_okay=False, path_type=pathlib.Path), envvar="COWSTORE_ROOT", default=None,
    help="Store root [default: /var/lib/cowstore as root, $XDG_DATA_HOME/cowstore otherwise; env COWSTORE_ROOT].",
)
@click.option(
    "--driver", "-s", envvar="COWSTORE_DRIVER", default=None,
    help="Storage driver [default: the root's driver, else btrfs on btrfs, else overlay2, else vfs; env COWSTORE_DRIVER].",
)
@click.option("--storage-opt", "opts", multiple=True, metavar="KEY=VALUE", help="Driver option (repeatable).")
@click.option(
    "--sync/--no-sync", default=True, show_default=True,
    help="Make every stored layer durable (syncfs + database fsync) before reporting it stored.",
)
@click.option(
    "--limit", "limits", multiple=True, metavar="KEY=VALUE",
    help="Bound hostile layers: max-bytes, max-entries, max-name, max-path, max-extended-header, "
    "max-xattr-bytes, min-free-disk (repeatable).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def main(
    ctx: click.Context,
    root: pathlib.Path | None,
    driver: str | None,
    opts: tuple[str, ...],
    sync: bool,
    limits: tuple[str, ...],
    debug: bool,
) -> None:
    """cowstore: copy-on-write storage for container images and containers."""
    try:
        parsed_limits = Limits.parse(parse_opts(limits, "--limit"))
    except InvalidOption as exc:
        raise click.BadParameter(str(exc), param_hint="--limit") from None
    state = App(root, driver, parse_opts(opts), debug, sync, parsed_limits)
    ctx.obj = state
    ctx.call_on_close(state.close)


main.add_command(image_group)
main.add_command(container_group)
main.add_command(image_ls, "images")
main.add_command(container_ls, "ps")
main.add_command(image_import, "import")
main.add_command(image_save, "save")
main.add_command(image_load, "load")
main.add_command(image_rm, "rmi")
main.add_command(image_tag, "tag")
main.add_command(image_history, "history")
main.add_command(container_create, "create")
main.add_command(container_mount, "mount")
main.add_command(container_umount, "umount")
main.add_command(container_diff, "diff")
main.add_command(container_commit, "commit")
main.add_command(container_export, "export")
main.add_command(container_rm, "rm")
main.add_command(container_cp, "cp")
main.add_command(inspect)
main.add_command(info)
main.add_command(demo)
main.add_command(check)
main.add_command(bench_command)
main.add_command(btrfs_group)
main.add_command(devicemapper_group)

__all__ = ["main"]
