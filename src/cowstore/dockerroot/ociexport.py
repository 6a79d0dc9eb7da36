"""Every image of a data root as one OCI layout directory, for `skopeo copy oci:DIR:TAG ...`.

The layout is written by the image package's writer, fed with the data root's layers:
each one's exact tar, replayed and checked against its diff id. An image with a bad
layer is reported and left out; blobs it already wrote are harmless (a layout may hold
blobs nobody references).
"""

from __future__ import annotations

import os
import pathlib
from typing import BinaryIO

from cowstore.dockerroot.layout import DockerLayer
from cowstore.dockerroot.source import Source
from cowstore.dockerroot.transfer import Echo, Outcome, Report, report_problems
from cowstore.errors import CowstoreError
from cowstore.images import Image, reference
from cowstore.images.config import parse_time
from cowstore.images.ocilayout import LayoutWriter, check_empty_target
from cowstore.images.sinks import DirSink


class _SourceLayers:
    """The data root's layers, as the layout writer asks for them."""

    def __init__(self, source: Source, tmp: pathlib.Path | None) -> None:
        self.source = source
        self.tmp = tmp

    def chain(self, chain: str) -> list[DockerLayer]:
        layers = [self.source.root.layer(chain)]
        while layers[-1].parent:
            layers.append(self.source.root.layer(layers[-1].parent))
        return layers

    def tar_stream(self, chain: str) -> BinaryIO:
        return self.source.spooled_layer(self.source.root.layer(chain), self.tmp)


def export_oci(source: Source, target: str | os.PathLike, echo: Echo, tmp: pathlib.Path | None = None) -> Report:
    """Write every image of `source` (with its tags) into the new OCI layout directory `target`."""
    check_empty_target(pathlib.Path(target))
    report = Report()
    images, problems = source.root.images()
    report_problems(report, problems, echo)
    layers = _SourceLayers(source, tmp)
    writer = LayoutWriter(DirSink(pathlib.Path(target)))
    for docker_image in images:
        name = ", ".join(docker_image.tags) or "<none>"
        try:
            tags = [reference.normalize(tag) for tag in docker_image.tags]
            created = parse_time(docker_image.created)
            image = Image(docker_image.id, docker_image.raw_config, docker_image.top_chain, created, tuple(tags))
            writer.add(image, tags, layers)
        except CowstoreError as exc:
            report.add(Outcome("image", docker_image.id, name, "failed", str(exc)), echo)
            continue
        report.add(Outcome("image", docker_image.id, name, "exported", f"{len(docker_image.diff_ids)} layers"), echo)
    writer.close()
    return report
