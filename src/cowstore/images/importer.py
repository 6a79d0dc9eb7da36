"""Turn a config plus its layer blobs into a stored image, all or nothing.

Every blob is verified while it streams: its compressed digest (when the manifest gives
one) at end of stream, and the uncompressed bytes against the config's diff id, both
before the layer store extracts anything. If any step fails, the references taken so far
are released, which deletes exactly the layers this import created: the store is left as
it was.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import BinaryIO, NamedTuple

from cowstore.digest import DigestingReader, Reader, chain_id, check_digest
from cowstore.errors import DigestMismatch, InvalidDigest, LayerNotFound
from cowstore.images import reference
from cowstore.images.compression import decompressed
from cowstore.images.config import diff_ids, parse_config
from cowstore.images.errors import BadImageArchive
from cowstore.images.store import Image, ImageStore
from cowstore.layers import Layer, LayerStore, batch
from cowstore.layers.faults import fault

Progress = Callable[[str, int, int], None]  # (what, index, total)


class LayerBlob(NamedTuple):
    """Where one layer's blob comes from and what it must hash to."""

    open: Callable[[], BinaryIO]
    what: str
    digest: str | None = None  # of the blob as stored (compressed), when known
    # `open` may run in another thread beside the other blobs' (files, an archive's members):
    # their layers may then be extracted side by side.
    independent: bool = False


class ImageSource(NamedTuple):
    """One image found in an archive, ready to import."""

    raw_config: bytes
    layers: list[LayerBlob]
    tags: list[str]


class _VerifyAtEnd:
    """Yields the decompressed layer; at its end, checks the compressed blob's digest.

    Raising from the final read makes the layer store abandon the layer before it is
    extracted, so a blob whose digest does not match never reaches the driver.
    """

    def __init__(self, plain: BinaryIO, raw: DigestingReader, expected: str, what: str) -> None:
        self._plain = plain
        self._raw = raw
        self._expected = expected
        self._what = what

    def read(self, n: int = -1) -> bytes:
        data = self._plain.read(n)
        if not data:
            self._raw.drain()
            self._raw.verify(self._expected, self._what)
        return data


def validate(source: ImageSource, what: str) -> list[str]:
    """Check a source before any layer is touched; returns the normalised tags."""
    config = parse_config(source.raw_config, f"{what}: image config")
    if len(diff_ids(config)) != len(source.layers):
        raise BadImageArchive(
            f"{what}: the manifest lists {len(source.layers)} layers "
            f"but the config has {len(diff_ids(config))} diff ids"
        )
    for blob in source.layers:
        if blob.digest is not None:
            try:
                check_digest(blob.digest)
            except InvalidDigest as exc:
                raise BadImageArchive(f"{blob.what}: {exc}") from None
    return [reference.normalize(t) for t in source.tags]


def import_image(
    images: ImageStore,
    source: ImageSource,
    what: str,
    progress: Progress | None = None,
    *,
    reuse_layers: bool = False,
) -> Image:
    """Register the layers of `source` bottom to top and publish the image.

    Where the driver applies detached and the blobs open independently, the layers not
    yet stored are extracted side by side and published in order (`cowstore.layers.batch`).

    The returned image carries the tags this import gave it (what `load` reports), not
    tags it already had. With `reuse_layers`, a layer whose chain id is stored already
    is not read again (as `docker load` does): for sources whose blobs are costly to
    produce and were checked when the stored layer was.
    """
    tags = validate(source, what)
    expected = diff_ids(parse_config(source.raw_config))
    layers = images.layers
    total = len(expected)
    side_by_side = batch.applies(layers) and all(blob.independent for blob in source.layers)
    top: str | None = None
    with layers.lease() as lease:
        index = 0
        while index < total:
            chain = chain_id(top, expected[index])
            if side_by_side and total - index > 1 and not _stored(layers, chain):
                stored = _register_chain(layers, source.layers[index:], expected[index:], top, lease, progress, index)
            else:
                if progress:
                    progress(source.layers[index].what, index, total)
                present = layers.retain_if_present(chain, lease) if reuse_layers else None
                stored = [present or _register(layers, source.layers[index], top, expected[index], lease)]
            for layer in stored:
                if top is not None:
                    layers.release(top, lease)  # the new child keeps its parent alive
                top = layer.chain_id
                fault("import:after-layer")
            index += len(stored)
        if progress:
            progress("done", total, total)
        image = images.add(source.raw_config, top, tags, lease=lease)
        return image._replace(tags=tuple(tags))


@contextlib.contextmanager
def _layer_tar(blob: LayerBlob) -> Iterator[Reader]:
    """The blob's uncompressed tar, checked against the blob's digest at its end. A blob
    whose own digest is unknown (docker-save's `<id>/layer.tar`) is checked by its diff id
    alone, when the layer store extracts it: its bytes are hashed once."""
    with blob.open() as handle:
        if blob.digest is None:
            plain, _ = decompressed(handle, blob.what)
            stream: Reader = plain
        else:
            raw = DigestingReader(handle)
            plain, _ = decompressed(raw, blob.what)
            stream = _VerifyAtEnd(plain, raw, blob.digest, blob.what)
        try:
            yield stream
        except DigestMismatch as exc:
            raise DigestMismatch(f"{blob.what}: {exc}") from None
        finally:
            plain.close()


def _stored(layers: LayerStore, chain: str) -> bool:
    try:
        layers.get(chain)
    except LayerNotFound:
        return False
    return True


def _register(layers: LayerStore, blob: LayerBlob, parent: str | None, diff_id: str, lease: str) -> Layer:
    with _layer_tar(blob) as stream:
        return layers.register(stream, parent, expected_diff_id=diff_id, lease=lease)


def _register_chain(
    layers: LayerStore,
    blobs: list[LayerBlob],
    diff_ids: list[str],
    parent: str | None,
    lease: str,
    progress: Progress | None,
    first: int,
) -> list[Layer]:
    """The layers from `first` up, extracted side by side: a load's layers are not yet stored."""
    total = first + len(blobs)

    def on_layer(offset: int) -> None:
        if progress:
            progress(blobs[offset].what, first + offset, total)

    pending = [
        batch.PendingLayer(diff_id, functools.partial(_layer_tar, blob))
        for blob, diff_id in zip(blobs, diff_ids, strict=True)
    ]
    return batch.register_chain(layers, pending, parent, lease=lease, on_layer=on_layer)


def import_all(
    images: ImageStore, sources: list[ImageSource], what: str, progress: Progress | None = None
) -> list[Image]:
    """Import several images; on failure, undo what this call did (new images, moved tags)."""
    for source in sources:
        validate(source, what)
    before = {image.id for image in images.images()}
    tags_before = images.tag_map()
    done: list[Image] = []
    try:
        for source in sources:
            done.append(import_image(images, source, what, progress))
    except BaseException:
        for image in reversed(done):
            if image.id not in before:
                images.remove(image.id, force=True)
        images.restore_tags(tags_before)
        raise
    return done
