"""The bodies of the hot commands, shared by their click commands and the fast path.

Each takes the open store and the parsed arguments and prints through
`cowstore.cli.render`, so `cowstore images` prints the same whether click or
`cowstore.cli.fast` parsed it. Nothing here imports click.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cowstore.cli.render import ago, echo, emit_json, table
from cowstore.units import human_size

if TYPE_CHECKING:
    from cowstore.images import Image
    from cowstore.store import Store


def _repo_tag(tag: str) -> tuple[str, str]:
    name, _, version = tag.rpartition(":")
    return name, version


def list_images(store: Store, quiet: bool, fmt: str) -> None:
    """`images`: one row per tag (untagged images once, as <none>)."""
    rows = []
    for image in store.images.images():
        size = store.images.size(image)
        for tag in image.tags or ("<none>:<none>",):
            rows.append((image, tag, size))
    if quiet:
        for image_id in dict.fromkeys(image.short_id for image, _, _ in rows):
            echo(image_id)
        return
    if fmt == "json":
        emit_json(
            [
                {
                    "Repository": _repo_tag(tag)[0],
                    "Tag": _repo_tag(tag)[1],
                    "ID": image.id,
                    "Created": image.created,
                    "Size": size,
                }
                for image, tag, size in rows
            ]
        )
        return
    table(
        ("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"),
        [(*_repo_tag(tag), image.short_id, ago(image.created), human_size(size)) for image, tag, size in rows],
    )


def list_containers(store: Store, quiet: bool, with_size: bool, fmt: str) -> None:
    """`ps`: every container, with the bytes it wrote and its virtual size unless `with_size` is off."""
    found = store.containers.containers()
    if quiet:
        for container in found:
            echo(container.short_id)
        return
    rows = []
    for container in found:
        written, virtual = store.containers.size(container) if with_size else (None, None)
        rows.append((container, store.containers.mount_count(container), written, virtual))
    if fmt == "json":
        emit_json(
            [
                {
                    "ID": c.id,
                    "Names": c.name,
                    "Image": c.image_ref,
                    "ImageID": c.image_id,
                    "Created": c.created,
                    "Mounted": count > 0,
                    "SizeRw": written,
                    "SizeRootFs": virtual,
                }
                for c, count, written, virtual in rows
            ]
        )
        return
    headers = ["CONTAINER ID", "IMAGE", "CREATED", "MOUNTED"] + (["SIZE"] if with_size else []) + ["NAMES"]
    lines = []
    for c, count, written, virtual in rows:
        size = (
            [f"{human_size(written)} (virtual {human_size(virtual)})"]
            if written is not None and virtual is not None
            else []
        )
        lines.append([c.short_id, c.image_ref, ago(c.created), "yes" if count else "no", *size, c.name])
    table(headers, lines)


def create(store: Store, image: str, name: str | None, opts: Mapping[str, str], mount: bool) -> None:
    """`create`: prints the container's id, and with `mount` the path of its mounted root too."""
    container = store.containers.create(image, name=name, storage_opts=opts or None)
    echo(container.id)
    if mount:
        echo(str(store.containers.mount(container.id)))


def mount(store: Store, container: str) -> None:
    echo(str(store.containers.mount(container)))


def umount(store: Store, containers: tuple[str, ...]) -> None:
    for ref in containers:
        store.containers.umount(ref)
        echo(ref)


def remove(store: Store, containers: tuple[str, ...], force: bool) -> None:
    for ref in containers:
        store.containers.remove(ref, force=force)
        echo(ref)


def import_file(
    store: Store, cwd: str, source: str, reference: str | None, message: str, cmd: list[str] | None = None
) -> Image:
    """`import FILE [REF]`: the new one-layer image. `source` is relative to `cwd` (the
    client's, when the store service runs the command); messages name it as given."""
    import pathlib

    from cowstore.images import import_rootfs
    from cowstore.images.compression import open_input

    with open_input(os.path.join(cwd, source), shown=source) as handle:
        return import_rootfs(store.images, handle, pathlib.Path(source).name, tag=reference, message=message, cmd=cmd)


def load(store: Store, cwd: str, source: str, quiet: bool) -> None:
    """`load -i FILE`: a line per image loaded (its id with `quiet`), as `docker load` prints."""
    from cowstore.images import load as load_images

    report_loaded(load_images(store.images, os.path.join(cwd, source), shown=source), quiet)


def report_loaded(loaded: list[Image], quiet: bool) -> None:
    """What `load` prints: a line per tag (or the id of an untagged image), ids alone with `quiet`."""
    for image in loaded:
        if quiet:
            echo(image.id)
            continue
        for tag in image.tags:
            echo(f"Loaded image: {tag}")
        if not image.tags:
            echo(f"Loaded image ID: {image.id}")


def image_details(store: Store, ref: str) -> dict[str, Any]:
    """`docker image inspect`-shaped facts about one image."""
    image = store.images.get(ref)
    config = image.config
    return {
        "Id": image.id,
        "RepoTags": list(image.tags),
        "RepoDigests": list(image.digests),
        "Created": config.get("created", ""),
        "Author": config.get("author", ""),
        "Architecture": config.get("architecture", ""),
        "Os": config.get("os", ""),
        "Config": config.get("config") or {},
        "Size": store.images.size(image),
        "RootFS": {"Type": "layers", "Layers": image.diff_ids},
        "TopLayer": image.top_layer,
        "GraphDriver": {
            "Name": store.driver.name,
            "Data": store.driver.metadata(store.layers.get(image.top_layer).cache_id) if image.top_layer else {},
        },
    }


def inspect_containers(store: Store, containers: tuple[str, ...], with_size: bool) -> None:
    emit_json([store.containers.inspect(ref, with_size=with_size) for ref in containers])


def inspect_images(store: Store, images: tuple[str, ...]) -> None:
    emit_json([image_details(store, ref) for ref in images])


def inspect(store: Store, objects: tuple[str, ...], kind: str | None) -> None:
    """`inspect`: containers are looked up first, then images (`kind` limits it to one)."""
    from cowstore.containers import ContainerNotFound
    from cowstore.images.errors import ImageNotFound

    result = []
    for ref in objects:
        if kind != "image":
            try:
                result.append(store.containers.inspect(ref))
                continue
            except ContainerNotFound:
                if kind == "container":
                    raise
        try:
            result.append(image_details(store, ref))
        except ImageNotFound:
            raise ImageNotFound(f"No such object: {ref}") from None
    emit_json(result)
