"""Bring a data root's images and containers into a cowstore store, one object at a time.

Images go through the image importer with their config bytes unchanged (so their ids
stay Docker's), their tags, and each layer's exact tar replayed from its tar-split and
checked against the diff id Docker recorded; a layer the store has already (a base
shared by several images) is not read twice. Containers become cowstore containers
of the same image, with the same id and name, and their read-write changes applied
to their new read-write layer. Each object succeeds or is reported and skipped: one
bad layer costs its images and their containers, nothing else.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, cast

from cowstore.containers import ContainerNotFound
from cowstore.dockerroot.layout import DockerContainer, DockerImage, DockerLayer, Problem
from cowstore.dockerroot.source import Source
from cowstore.errors import CowstoreError
from cowstore.images import ImageNotFound, reference
from cowstore.images.importer import ImageSource, LayerBlob, import_image
from cowstore.store import Store

Echo = Callable[[str], None]


@dataclass
class Outcome:
    """What happened to one object: imported (or verified, exported), present, skipped or failed."""

    kind: str
    id: str
    name: str
    status: str
    detail: str = ""


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome, echo: Echo) -> None:
        self.outcomes.append(outcome)
        short = outcome.id.removeprefix("sha256:")[:12]
        label = f" {outcome.name}" if outcome.name else ""
        detail = f": {outcome.detail}" if outcome.detail else ""
        echo(f"{outcome.kind} {short}{label}: {outcome.status}{detail}")

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def summary(self) -> str:
        """`images: 2 imported, 1 failed; containers: 1 imported`."""
        parts = []
        for kind in ("image", "container"):
            counts = Counter(o.status for o in self.outcomes if o.kind == kind)
            words = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"
            parts.append(f"{kind}s: {words}")
        return "; ".join(parts)


def report_problems(report: Report, problems: list[Problem], echo: Echo) -> None:
    for problem in problems:
        report.add(Outcome(problem.kind, problem.id, "", "failed", problem.reason), echo)


class Importer:
    """One run of `docker-root import` from `source` into `store`."""

    def __init__(self, source: Source, store: Store, echo: Echo, *, dry_run: bool = False) -> None:
        self.source = source
        self.store = store
        self.echo = echo
        self.dry_run = dry_run
        self.report = Report()
        self.imported: set[str] = set()  # image ids the store holds after this run
        self.verified: set[str] = set()  # chain ids a dry run has rebuilt and checked

    def run(self, *, images_only: bool = False) -> Report:
        images, problems = self.source.root.images()
        report_problems(self.report, problems, self.echo)
        for image in images:
            self._image(image)
        if not images_only:
            containers, problems = self.source.root.containers()
            report_problems(self.report, problems, self.echo)
            for container in containers:
                self._container(container)
        return self.report

    # ---- images -----------------------------------------------------------------

    def _image(self, image: DockerImage) -> None:
        name = ", ".join(image.tags) or "<none>"
        try:
            stored = self.store.images.get(image.id)
        except ImageNotFound:
            stored = None
        try:
            if stored is not None and {reference.normalize(t) for t in image.tags} <= set(stored.tags):
                self.imported.add(image.id)
                self.report.add(Outcome("image", image.id, name, "present"), self.echo)
                return
            layers = self.source.image_layers(image)
            if self.dry_run:
                for layer in layers:
                    self._verify(layer)
            else:
                blobs = [
                    LayerBlob(
                        open=cast(Callable[[], BinaryIO], functools.partial(self.source.layer_tar, layer)),
                        what=f"layer {layer.diff_id}",
                    )
                    for layer in layers
                ]
                source = ImageSource(image.raw_config, blobs, list(image.tags))
                import_image(self.store.images, source, f"image {image.id}", self._layer_progress, reuse_layers=True)
        except CowstoreError as exc:
            self.report.add(Outcome("image", image.id, name, "failed", str(exc)), self.echo)
            return
        self.imported.add(image.id)
        status = "verified" if self.dry_run else "imported"
        self.report.add(Outcome("image", image.id, name, status, f"{len(image.diff_ids)} layers"), self.echo)

    def _layer_progress(self, what: str, index: int, total: int) -> None:
        if index < total:
            self.echo(f"  {what} ({index + 1}/{total})")

    def _verify(self, layer: DockerLayer) -> None:
        """Rebuild a layer's tar and check it against its diff id, storing nothing (dry run)."""
        if layer.chain_id in self.verified:
            return
        self.source.verify_layer(layer)
        self.verified.add(layer.chain_id)

    # ---- containers -------------------------------------------------------------

    def _container(self, container: DockerContainer) -> None:
        outcome = Outcome("container", container.id, container.name, "failed")
        try:
            self._import_container(container, outcome)
        except CowstoreError as exc:
            outcome.status, outcome.detail = "failed", str(exc)
        self.report.add(outcome, self.echo)

    def _import_container(self, container: DockerContainer, outcome: Outcome) -> None:
        if container.driver != self.source.driver:
            outcome.status = "skipped"
            outcome.detail = f"created with the {container.driver or 'unknown'} driver (Docker hides it too)"
            return
        if container.image_id not in self.imported:
            outcome.detail = f"its image {container.image_id[7:19]} was not imported"
            return
        with contextlib.suppress(ContainerNotFound):
            if self.store.containers.get(container.id).name == container.name:
                outcome.status = "present"
                return
        with self.source.container_changes(container, self.store.layers.tmp) as changes:
            if self.dry_run:
                size = changes.seek(0, os.SEEK_END)
                outcome.status, outcome.detail = "verified", f"changeset of {size} bytes"
                return
            created = self.store.containers.create(container.image_id, name=container.name, container_id=container.id)
            try:
                self.store.containers.apply_changes(created.id, changes)
            except BaseException:
                self.store.containers.remove(created.id, force=True)
                raise
        outcome.status, outcome.detail = "imported", f"image {container.image_ref}"
