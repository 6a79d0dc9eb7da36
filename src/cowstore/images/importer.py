"""Turn a config plus its layer blobs into a stored image, all or nothing.

Every blob is verified while it streams: its compressed digest (when the manifest gives
one) at end of stream, and the uncompressed bytes against the config's diff id, both
before the layer store extracts anything. If any step fails, the references taken so far
are released, which deletes exactly the layers this import created: the store is left as
it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from cowstore.digest import DigestingReader, chain_id, check_digest
from cowstore.errors import DigestMismatch, InvalidDigest
from cowstore.images import reference
from cowstore.images.compression import decompressed
from cowstore.images.config import diff_ids, parse_config
from cowstore.images.errors import BadImageArchive
from cowstore.images.store import Image, ImageStore
from cowstore.layers import Layer, LayerStore
from cowstore.layers.faults import fault

Progress = Callable[[str, int, int], None]  # (what, index, total)


@dataclass(frozen=True)
class LayerBlob:
    """Where one layer's blob comes from and what it must hash to."""

    open: Callable[[], BinaryIO]
    what: str
    digest: str | None = None  # of the blob as stored (compressed), when known


@dataclass(frozen=True)
class ImageSource:
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

    The returned image carries the tags this import gave it (what `load` reports), not
    tags it already had. With `reuse_layers`, a layer whose chain id is stored already
    is not read again (as `docker load` does): for sources whose blobs are costly to
    produce and were checked when the stored layer was.
    """
    tags = validate(source, what)
    expected = diff_ids(parse_config(source.raw_config))
    layers = images.layers
    top: str | None = None
    with layers.lease() as lease:
        for index, (blob, diff_id) in enumerate(zip(source.layers, expected, strict=True)):
            if progress:
                progress(blob.what, index, len(expected))
            present = layers.retain_if_present(chain_id(top, diff_id), lease) if reuse_layers else None
            layer = present or _register(layers, blob, top, diff_id, lease)
            if top is not None:
                layers.release(top, lease)  # the new child keeps its parent alive
            top = layer.chain_id
            fault("import:after-layer")
        if progress:
            progress("done", len(expected), len(expected))
        image = images.add(source.raw_config, top, tags, lease=lease)
        return dataclasses.replace(image, tags=tuple(tags))


def _register(layers: LayerStore, blob: LayerBlob, parent: str | None, diff_id: str, lease: str) -> Layer:
    """Register one blob as a layer; a blob whose own digest is unknown (docker-save's
    `<id>/layer.tar`) is checked by its diff id alone, so its bytes are hashed once."""
    with blob.open() as handle:
        raw = DigestingReader(handle) if blob.digest is not None else None
        plain, _ = decompressed(raw or handle, blob.what)
        stream = _VerifyAtEnd(plain, raw, blob.digest, blob.what) if raw is not None else plain
        try:
            return layers.register(stream, parent, expected_diff_id=diff_id, lease=lease)
        except DigestMismatch as exc:
            raise DigestMismatch(f"{blob.what}: {exc}") from None
        finally:
            plain.close()


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
