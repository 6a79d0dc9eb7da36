"""`cowstore snapshotter serve`: the store as a containerd proxy snapshotter."""

from __future__ import annotations

import pathlib

import click

from cowstore.cli.app import app


@click.group("snapshotter")
def snapshotter_group() -> None:
    """Serve the store to containerd (a proxy snapshotter plugin)."""


@snapshotter_group.command("serve")
@click.option(
    "--address",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    default="/run/cowstore/snapshotter.sock",
    show_default=True,
    help="Unix socket containerd dials ([proxy_plugins.NAME] address in its config.toml).",
)
def serve(address: pathlib.Path) -> None:
    """Answer containerd's snapshots API on ADDRESS until SIGTERM; --root, --driver and
    --storage-opt choose the store, as for every command."""
    from cowstore.snapshotter.server import serve as run

    store = app().store

    def ready() -> None:
        click.echo(f"cowstore snapshotter: {store.driver.name} store {store.root} on {address}", err=True)

    run(store.layers, address, ready=ready)
