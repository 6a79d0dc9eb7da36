"""The state a CLI invocation shares between commands: options and a lazily opened store.

Nothing here loads click or the store at import: the fast path (`cowstore.cli.fast`)
uses the same state without either until it opens the store.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cowstore.archive.limits import Limits
    from cowstore.store import Store


class App:
    """The global options of one invocation and the store they open (once, on first use)."""

    def __init__(
        self,
        root: pathlib.Path | None,
        driver: str | None,
        storage_opts: dict[str, str],
        debug: bool,
        sync: bool = True,
        limits: Limits | None = None,
    ) -> None:
        self.root = root
        self.driver = driver
        self.storage_opts = storage_opts
        self.debug = debug
        self.sync = sync
        self.limits = limits
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        return self.open()

    def open(self, *, lazy_driver: bool = False) -> Store:
        """The store of this command, opened on first call (`lazy_driver`: see `Store`)."""
        if self._store is None:
            from cowstore.store import Store

            self._store = Store(
                self.root, self.driver, self.storage_opts, sync=self.sync, limits=self.limits, lazy_driver=lazy_driver
            )
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def app() -> App:
    """The App of the running click command."""
    import click

    return click.get_current_context().find_object(App)  # type: ignore[return-value]


def split_opts(values: tuple[str, ...] | list[str]) -> dict[str, str] | None:
    """`KEY=VALUE` pairs of a repeated option; None when one is not of that form."""
    result = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            return None
        result[key.strip()] = value.strip()
    return result


def parse_opts(values: tuple[str, ...], option: str = "--storage-opt") -> dict[str, str]:
    """`KEY=VALUE` pairs of a repeated option (click's BadParameter for a malformed one)."""
    result = split_opts(values)
    if result is None:
        import click

        bad = next(item for item in values if split_opts([item]) is None)
        raise click.BadParameter(f"{bad!r} is not KEY=VALUE", param_hint=option)
    return result
