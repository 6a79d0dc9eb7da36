"""`cowstore system df`: what images, containers and layers really occupy, counted once.

Docker's `system df` adds up each image's layer sizes and each container's apparent
size, so a layer two images share counts twice and a sparse or hard-linked file at
its length. Here the driver reports the blocks each layer's storage holds that no
earlier layer already holds (`Driver.disk_usage`, parents first), and everything is
built from those counts: an image's size is the sum over its layers, split into what
it shares with other images and what is its own; the summary counts each layer once,
so that images, containers, unused layers and the store's own files add up to what
the store root occupies on its filesystem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from cowstore.containers import Container
from cowstore.host import diskusage
from cowstore.images import Image
from cowstore.layers.records import Layer
from cowstore.store import Store


@dataclass
class LayerUsage:
    layer: Layer
    size: int
    images: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)


@dataclass
class ImageUsage:
    image: Image
    size: int  # the image's layers, each counted once
    shared: int  # of which other images use too
    containers: list[str]

    @property
    def unique(self) -> int:
        return self.size - self.shared


@dataclass
class ContainerUsage:
    container: Container
    size: int  # its read-write and -init layers
    mounted: bool


@dataclass
class Summary:
    """One row of the summary table: a kind of object, how many, how many in use, bytes."""

    kind: str
    total: int | None  # None: not a count of objects
    active: int | None
    size: int
    reclaimable: int


@dataclass
class SystemUsage:
    images: list[ImageUsage]
    containers: list[ContainerUsage]
    layers: list[LayerUsage]
    summary: list[Summary]

    @property
    def total(self) -> int:
        return sum(row.size for row in self.summary)

    def as_json(self) -> dict[str, Any]:
        return {
            "Summary": [
                {
                    "Type": row.kind,
                    "TotalCount": row.total,
                    "Active": row.active,
                    "Size": row.size,
                    "Reclaimable": row.reclaimable,
                }
                for row in self.summary
            ],
            "Total": self.total,
            "Images": [
                {
                    "ID": usage.image.id,
                    "RepoTags": list(usage.image.tags),
                    "Size": usage.size,
                    "SharedSize": usage.shared,
                    "UniqueSize": usage.unique,
                    "Containers": len(usage.containers),
                }
                for usage in self.images
            ],
            "Containers": [
                {
                    "ID": usage.container.id,
                    "Names": usage.container.name,
                    "Image": usage.container.image_ref,
                    "Size": usage.size,
                    "Mounted": usage.mounted,
                }
                for usage in self.containers
            ],
            "Layers": [
                {
                    "ChainID": usage.layer.chain_id,
                    "DiffID": usage.layer.diff_id,
                    "Size": usage.size,
                    "Images": len(usage.images),
                    "Containers": len(usage.containers),
                }
                for usage in self.layers
            ],
        }


def system_usage(store: Store) -> SystemUsage:
    """Measure the store (a consistent view: the store lock is held while the driver counts)."""
    with store.layers.lock.shared():
        layers = sorted(store.layers.layers(), key=lambda layer: layer.depth)
        containers = store.containers.containers()
        rws = {rw.name: rw for rw in store.layers.rw_layers()}
        images = store.images.images()
        ids = [layer.cache_id for layer in layers]
        for found in rws.values():
            ids += [found.init_id, found.mount_id] if found.init_id else [found.mount_id]
        usage = store.driver.disk_usage(list(dict.fromkeys(ids)))  # an image's -init layer is shared
        chains = {image.id: store.layers.chain(image.top_layer) if image.top_layer else [] for image in images}
        per_layer = {layer.chain_id: LayerUsage(layer, usage.layers.get(layer.cache_id, 0)) for layer in layers}
        for image in images:
            for layer in chains[image.id]:
                per_layer[layer.chain_id].images.append(image.id)
        per_container = []
        counted: set[str] = set()  # a shared -init layer counts for the first of its containers
        for container in containers:
            rw = rws.get(container.id)
            if rw is None:
                continue
            own_ids = [id for id in (rw.mount_id, rw.init_id) if id and id not in counted]
            counted.update(own_ids)
            own = sum(usage.layers.get(id, 0) for id in own_ids)
            per_container.append(ContainerUsage(container, own, rw.mount_count > 0))
            for layer in store.layers.chain(rw.parent) if rw.parent else []:
                per_layer[layer.chain_id].containers.append(container.id)
        attributed = sum(row.size for row in per_layer.values()) + sum(row.size for row in per_container)
        # The driver's own bytes, and any layer no record explains (`check` finds those).
        store_files = usage.total - attributed + _outside_driver(store)
    per_image = _images(images, chains, per_layer, containers)
    layer_rows = list(per_layer.values())
    return SystemUsage(
        per_image, per_container, layer_rows, _summary(per_image, per_container, layer_rows, store_files)
    )


def _images(
    images: list[Image], chains: dict[str, list[Layer]], per_layer: dict[str, LayerUsage], containers: list[Container]
) -> list[ImageUsage]:
    result = []
    for image in images:
        rows = [per_layer[layer.chain_id] for layer in chains[image.id]]
        shared = sum(row.size for row in rows if len(row.images) > 1)
        users = [c.id for c in containers if c.image_id == image.id]
        result.append(ImageUsage(image, sum(row.size for row in rows), shared, users))
    return result


def _summary(
    images: list[ImageUsage], containers: list[ContainerUsage], layers: list[LayerUsage], store_files: int
) -> list[Summary]:
    in_images = [row for row in layers if row.images]
    loose = [row for row in layers if not row.images]
    return [
        Summary(
            "Images",
            len(images),
            sum(1 for usage in images if usage.containers),
            sum(row.size for row in in_images),
            sum(row.size for row in in_images if not row.containers),
        ),
        Summary(
            "Containers",
            len(containers),
            sum(1 for usage in containers if usage.mounted),
            sum(usage.size for usage in containers),
            sum(usage.size for usage in containers if not usage.mounted),
        ),
        Summary(
            "Layers without image",
            len(loose),
            sum(1 for row in loose if row.containers),
            sum(row.size for row in loose),
            sum(row.size for row in loose if not row.containers),
        ),
        Summary("Driver and metadata", None, None, store_files, 0),
    ]


def _outside_driver(store: Store) -> int:
    """What the root holds beside the driver's storage: the database, the lock, spools."""
    seen: set[tuple[int, int]] = set()
    total = os.lstat(store.root).st_blocks * 512
    driver = {os.path.realpath(path) for path in store.driver.storage_roots()}
    with os.scandir(store.root) as entries:
        for entry in entries:
            if os.path.realpath(entry.path) not in driver:
                total += diskusage.allocated(entry.path, seen)
    return total
