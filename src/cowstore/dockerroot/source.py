"""A data root opened for reading: its metadata plus its driver's storage.

What the import, the export and `ls` need from it: each layer as its exact original
tar (tar-split replayed over the driver's files, checked against the layer's diff id)
and each container's changes as an OCI changeset tar.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
from typing import Any, BinaryIO

from cowstore.digest import DigestingReader, DigestingWriter
from cowstore.dockerroot import tarsplit
from cowstore.dockerroot.devmapper import PoolDevices
from cowstore.dockerroot.layout import BadObject, DockerContainer, DockerImage, DockerLayer, DockerRoot, Problem
from cowstore.dockerroot.storage import Storage, open_storage
from cowstore.errors import CowstoreError
from cowstore.host import fsutil

_COPY = 1024 * 1024


def _check(layer: DockerLayer, digest: str) -> None:
    if digest != layer.diff_id:
        raise BadObject(
            f"layer {layer.diff_id} (storage id {layer.cache_id}) rebuilds to {digest}: "
            "its files were changed since Docker stored it"
        )


class Source:
    """A Docker data root and its storage, read-only; close() undoes any mount reading needed."""

    def __init__(self, path: str | os.PathLike, driver: str | None = None, *, pool: PoolDevices | None = None) -> None:
        self.root = DockerRoot(path, driver)
        self.storage: Storage = open_storage(self.root, pool)

    @property
    def driver(self) -> str:
        return self.root.driver

    def close(self) -> None:
        self.storage.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def layer_tar(self, layer: DockerLayer) -> tarsplit.ChunkReader:
        """The layer's original tar as a stream (unverified: the reader checks the diff id)."""
        if layer.tar_split is None:
            raise BadObject(f"layer {layer.diff_id} has no tar-split.json.gz: its exact tar cannot be rebuilt")
        stack = contextlib.ExitStack()
        try:
            files = stack.enter_context(self.storage.layer_files(layer.cache_id))
            return tarsplit.ChunkReader(tarsplit.chunks(layer.tar_split, files), stack)
        except BaseException:
            stack.close()
            raise

    def spooled_layer(self, layer: DockerLayer, tmp: pathlib.Path | None = None) -> BinaryIO:
        """The layer's tar in a temporary file, verified against its diff id, positioned at 0."""

        def write(out: BinaryIO) -> None:
            digester = DigestingWriter(out)
            with self.layer_tar(layer) as stream:
                shutil.copyfileobj(stream, digester, _COPY)
            _check(layer, digester.digest)

        return fsutil.spooled(write, tmp, "droot-layer-")

    def verify_layer(self, layer: DockerLayer) -> None:
        """Rebuild the layer's tar and check it against its diff id, keeping nothing."""
        with self.layer_tar(layer) as stream:
            reader = DigestingReader(stream)
            reader.drain()
        _check(layer, reader.digest)

    def image_layers(self, image: DockerImage) -> list[DockerLayer]:
        return self.root.chain(image)

    def container_base(self, container: DockerContainer) -> str | None:
        """What Docker diffs a container layer against: its -init layer, else the image's top."""
        if container.init_id:
            return container.init_id
        return self.root.layer(container.parent).cache_id if container.parent else None

    def container_changes(self, container: DockerContainer, tmp: pathlib.Path | None = None) -> BinaryIO:
        """The container's changes as an OCI changeset tar in a temporary file, positioned at 0."""
        base = self.container_base(container)
        return fsutil.spooled(
            lambda out: self.storage.write_changes(container.mount_id, base, out), tmp, "droot-changes-"
        )

    def container_size(self, container: DockerContainer) -> int:
        return self.storage.changes_size(container.mount_id, self.container_base(container))

    def listing(self) -> dict[str, Any]:
        """What `docker-root ls` shows: driver, images with sizes, containers with their changes' size."""
        images, problems = self.root.images()
        containers, more = self.root.containers()
        problems += more
        image_rows = []
        for image in images:
            try:
                size = sum(layer.size for layer in self.image_layers(image))
            except CowstoreError as exc:
                problems.append(Problem("image", image.id, str(exc)))
                continue
            layers = len(image.diff_ids)
            image_rows.append({"Id": image.id, "RepoTags": list(image.tags), "Size": size, "Layers": layers})
        container_rows = []
        for container in containers:
            size_rw: int | None = None
            if container.driver == self.driver:
                try:
                    size_rw = self.container_size(container)
                except CowstoreError as exc:
                    problems.append(Problem("container", container.id, str(exc)))
            container_rows.append(
                {
                    "Id": container.id,
                    "Name": container.name,
                    "Image": container.image_id,
                    "ImageRef": container.image_ref,
                    "Driver": container.driver,
                    "SizeRw": size_rw,
                }
            )
        return {
            "Driver": self.driver,
            "Images": image_rows,
            "Containers": container_rows,
            "Problems": [{"Kind": p.kind, "Id": p.id, "Reason": p.reason} for p in problems],
        }
