"""The state a CLI invocation shares between commands: options and a lazily opened store."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

import click

from cowstore.archive import Limits
from cowstore.store import Store


@dataclass
class App:
    root: pathlib.Path | None
    driver: str | None
    storage_opts: dict[str, str]
    debug: bool
    sync: bool = True
    limits: Limits | None = None
    _store: Store | None = field(default=None, repr=False)

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.root, self.driver, self.storage_opts, sync=self.sync, limits=self.limits)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def app() -> App:
    return click.get_current_context().find_object(App)  # type: ignore[return-value]


def parse_opts(values: tuple[str, ...], option: str = "--storage-opt") -> dict[str, str]:
    """`KEY=VALUE` pairs of a repeated option."""
    result = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        result[key.strip()] = value.strip()
    return result
