"""`load` and `save`: detect an archive's format and move images in or out of the store."""

from __future__ import annotations

import os
import pathlib
import re
from typing import BinaryIO

from cowstore.errors import space_errors
from cowstore.images import dockerarchive, ocilayout, reference
from cowstore.images.errors import BadImageArchive, InvalidReference
from cowstore.images.importer import Progress, import_all
from cowstore.images.sinks import DirSink, TarSink
from cowstore.images.sources import open_tree
from cowstore.images.store import Image, ImageStore

FORMATS = ("docker-archive", "oci-archive", "oci-dir")


def _layout_name(source: str | os.PathLike | BinaryIO) -> str | None:
    """The repository name an OCI layout's bare tags get: its file or directory name."""
    if hasattr(source, "read"):
        return None
    name = pathlib.Path(source).name.lower()
    name = re.sub(r"\.(tar|tar\.gz|tgz|tar\.zst|oci)$", "", name)
    return name if re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*", name) else None


def load(
    images: ImageStore,
    source: str | os.PathLike | BinaryIO,
    progress: Progress | None = None,
    shown: str | None = None,
) -> list[Image]:
    """Import every image of a docker-save archive or an OCI layout (directory or tar);
    messages name a path `source` as `shown`, when given."""
    with space_errors("loading images"), open_tree(source, images.layers.tmp, images.layers.limits, shown) as tree:
        if dockerarchive.is_docker_archive(tree):
            sources = dockerarchive.read_sources(tree)
        elif ocilayout.is_oci_layout(tree):
            sources = ocilayout.read_sources(tree, _layout_name(source))
        else:
            raise BadImageArchive(
                f"{tree.what}: neither a docker-save archive (manifest.json) nor an OCI layout (oci-layout)"
            )
        return import_all(images, sources, tree.what, progress)


def resolve(images: ImageStore, refs: list[str]) -> list[tuple[Image, list[str]]]:
    """The images to save and the tags to record: the tag named (none when named by id, like Docker)."""
    entries: dict[str, tuple[Image, list[str]]] = {}
    for ref in refs:
        image = images.get(ref)
        tags = [t for t in image.tags if _matches(ref, t)]
        if image.id in entries:
            entries[image.id][1].extend(t for t in tags if t not in entries[image.id][1])
        else:
            entries[image.id] = (image, tags)
    return list(entries.values())


def _matches(ref: str, tag: str) -> bool:
    try:
        return reference.normalize(ref) == tag
    except InvalidReference:
        return False


def save(
    images: ImageStore,
    refs: list[str],
    out: BinaryIO | os.PathLike | str,
    *,
    fmt: str = "docker-archive",
    progress: Progress | None = None,
) -> None:
    """Write images as a docker-save tar, an OCI layout tar, or an OCI layout directory."""
    entries = resolve(images, refs)
    if fmt == "oci-dir":
        ocilayout.check_empty_target(out)  # type: ignore[arg-type]
        directory = DirSink(pathlib.Path(out))  # type: ignore[arg-type]
        try:
            ocilayout.write_layout(entries, images.layers, directory, progress)
        finally:
            directory.close()
        return
    if fmt not in FORMATS:
        raise BadImageArchive(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "docker-archive":
        dockerarchive.write_archive(entries, images.layers, out, progress)  # type: ignore[arg-type]
        return
    sink = TarSink(out)  # type: ignore[arg-type]
    try:
        ocilayout.write_layout(entries, images.layers, sink, progress)
    finally:
        sink.close()
