"""`cowstore system prune`: everything nothing uses, in the order that frees the most.

Containers first (stopped and unmounted: here nothing runs, so every unmounted one),
since they keep images; then dangling images (untagged; with `all_images`, every
image no container uses); then layers nobody holds a reference on (leaked by a crash
or a bug; a live operation's lease still counts as a holder) and driver storage no
record names, Docker's "orphan overlay2 directories". What it reclaimed is measured,
as `system df` counts it, before and after.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from cowstore.containers import Container
from cowstore.layers.records import Layer
from cowstore.store import Store
from cowstore.system.usage import system_usage


@dataclass
class PruneReport:
    containers: list[Container]
    images: list[str]  # `rmi` lines: Untagged: ..., Deleted: ...
    layers: list[Layer]
    orphans: list[str]  # driver ids
    reclaimed: int


def system_prune(store: Store, *, all_images: bool = False) -> PruneReport:
    before = system_usage(store).total
    containers, _ = store.containers.prune()
    lines: list[str] = []
    with store.layers.lock.exclusive():  # no container can start using an image meanwhile
        for image in store.images.images():
            if store.containers.users_of(image.id) or (image.tags and not all_images):
                continue
            lines += store.images.remove(image.id, force=True)  # forced: it may have several tags
        owners = Counter(image.top_layer for image in store.images.images() if image.top_layer)
        layers, orphans = store.layers.prune(owners)
    after = system_usage(store).total
    return PruneReport(containers, lines, layers, orphans, max(0, before - after))
