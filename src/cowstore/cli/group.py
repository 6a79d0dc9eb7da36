"""The click command group of `cowstore`: global options, lazily loaded commands, one-line errors.

Every command runs through here except the hot ones that `cowstore.cli.fast` answers
without loading click (see `cowstore.cli.run`).
"""

from __future__ import annotations

import importlib
import pathlib
import sqlite3
from typing import Any

import click

from cowstore.archive.limits import Limits
from cowstore.cli import _COMMANDS
from cowstore.cli.app import App, parse_opts
from cowstore.errors import CowstoreError, InvalidOption


class _Main(click.Group):
    """Loads commands lazily; turns cowstore errors into one line on stderr and exit 1
    (a traceback with --debug)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command

    def invoke(self, ctx: click.Context) -> Any:
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
    "--root",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    envvar="COWSTORE_ROOT",
    default=None,
    help="Store root [default: /var/lib/cowstore as root, $XDG_DATA_HOME/cowstore otherwise; env COWSTORE_ROOT].",
)
@click.option(
    "--driver",
    "-s",
    envvar="COWSTORE_DRIVER",
    default=None,
    help="Storage driver [default: the root's driver, else btrfs on btrfs, else overlay2, else vfs; "
    "env COWSTORE_DRIVER].",
)
@click.option("--storage-opt", "opts", multiple=True, metavar="KEY=VALUE", help="Driver option (repeatable).")
@click.option(
    "--sync/--no-sync",
    default=True,
    show_default=True,
    help="Make every stored layer durable (syncfs + database fsync) before reporting it stored.",
)
@click.option(
    "--limit",
    "limits",
    multiple=True,
    metavar="KEY=VALUE",
    help="Bound hostile layers: max-bytes, max-entries, max-name, max-path, max-extended-header, "
    "max-xattr-bytes, min-free-disk (repeatable).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option(
    "--host",
    "-H",
    envvar="COWSTORE_HOST",
    default=None,
    metavar="unix://PATH",
    help="Socket of the store service for the hot commands [default: ROOT/cowstore.sock; env COWSTORE_HOST]; "
    "without a service they run in this process.",
)
@click.pass_context
def main(
    ctx: click.Context,
    root: pathlib.Path | None,
    driver: str | None,
    opts: tuple[str, ...],
    sync: bool,
    limits: tuple[str, ...],
    debug: bool,
    host: str | None,  # read before click runs, by cowstore.cli.client; a command here runs in-process
) -> None:
    """cowstore: copy-on-write storage for container images and containers."""
    try:
        parsed_limits = Limits.parse(parse_opts(limits, "--limit"))
    except InvalidOption as exc:
        raise click.BadParameter(str(exc), param_hint="--limit") from None
    state = App(root, driver, parse_opts(opts), debug, sync, parsed_limits)
    ctx.obj = state
    ctx.call_on_close(state.close)


__all__ = ["main"]
