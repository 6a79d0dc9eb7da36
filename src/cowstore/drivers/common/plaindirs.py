"""Layers that are plain directories, always there and never mounted (vfs, btrfs).

`get` returns the directory itself, so `put` has nothing to release; it still
refuses an unknown id, as every driver's put does.
"""

from __future__ import annotations

import os
import pathlib

from cowstore.drivers.common.ids import check_id
from cowstore.errors import LayerNotFound


class PlainDirectories:
    """Mixin for a Driver whose layer `id` is the directory `layers_dir/<id>`."""

    layers_dir: pathlib.Path

    def _path(self, id: str) -> pathlib.Path:
        return self.layers_dir / check_id(id)

    def storage_paths(self, id: str) -> list[pathlib.Path]:
        return [self._path(id)]

    def put(self, id: str) -> None:
        if not self.exists(id):
            raise LayerNotFound(f"layer {id} does not exist")

    def exists(self, id: str) -> bool:
        return self._path(id).is_dir()

    def ids(self) -> list[str]:
        return sorted(n for n in os.listdir(self.layers_dir) if not n.startswith("."))
