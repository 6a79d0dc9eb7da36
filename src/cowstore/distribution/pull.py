"""`cowstore pull`: a registry image into the layer and image stores, verified and all or nothing.

The manifest (through any index, for the requested platform) and the config come first;
the config's diff ids give every layer's chain id, so layers the store already holds are
neither downloaded nor extracted again. The others download up to three at once into the
blob store while the layer store extracts them, each reading its blob as it arrives: a
download never waits for the extraction of the layer below it, and the extraction never
waits for a whole blob. Where the driver applies detached, two layers extract at once
and are published in order (`cowstore.layers.batch`); elsewhere one after another.
A layer becomes visible only after the blob's size and digest and the layer's diff id
are checked. Everything is taken under a lease: a failure or a kill leaves no layer and
no image behind.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cowstore.digest import Reader, chain_id
from cowstore.distribution import manifests
from cowstore.distribution.blobstore import BlobStore, Cancelled, CountingReader, Ingest
from cowstore.distribution.client import Registry, Settings
from cowstore.distribution.errors import ManifestInvalid
from cowstore.distribution.manifests import MAX_INDEX_DEPTH, Descriptor, Index, Manifest, Platform
from cowstore.distribution.progress import Progress, Silent, short
from cowstore.distribution.records import BlobRecord, DistributionRecords, ManifestRecord
from cowstore.errors import DigestMismatch, InvalidArgument
from cowstore.images.compression import decompressed
from cowstore.images.config import MAX_JSON, diff_ids, parse_config
from cowstore.images.reference import Remote, parse_remote
from cowstore.images.store import Image
from cowstore.layers import Layer, batch
from cowstore.store import Store

DOWNLOADS = 3  # layers downloading at once, as Docker's max-concurrent-downloads


@dataclass(frozen=True)
class Pulled:
    reference: Remote  # with the digest of what was pulled (an index's, when it was one)
    image: Image
    fetched: int  # layers downloaded (the others were already stored)


def _open_stores(store: Store) -> tuple[DistributionRecords, BlobStore]:
    records = DistributionRecords(store.layers.db)
    return records, BlobStore(store.root, records)


def tidy(store: Store) -> None:
    """Drop partial blobs of killed transfers and kept blobs whose layer is gone."""
    _, blobs = _open_stores(store)
    blobs.remove_abandoned_ingests()
    blobs.prune(layer.diff_id for layer in store.layers.layers())


class Puller:
    def __init__(self, store: Store, settings: Settings | None = None, progress: Progress | None = None) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.progress: Progress = progress or Silent()
        self.records, self.blobs = _open_stores(store)

    def pull(self, ref: str, *, platform: Platform | None = None, all_tags: bool = False) -> list[Pulled]:
        remote = parse_remote(ref)
        if all_tags and (remote.digest or ref.rpartition("/")[2].count(":")):
            raise InvalidArgument(f"tag or digest can't be used with --all-tags: {ref}")
        platform = platform or Platform.parse(None)
        tidy(self.store)
        registry = Registry(remote, self.settings)
        try:
            if not all_tags:
                return [self._pull_one(registry, remote, platform)]
            self.progress.message(f"Pulling all tags of {remote.name}")
            return [self._pull_one(registry, remote.with_tag(tag), platform) for tag in registry.tags(remote.path)]
        finally:
            registry.close()

    def _resolve(self, registry: Registry, remote: Remote, platform: Platform) -> tuple[str, Manifest]:
        """(digest of what the reference names, the image manifest for `platform`)."""
        what = str(remote)
        body, content_type, digest = registry.manifest(remote.path, remote.reference, what)
        top_digest = digest
        document = manifests.parse(body, content_type, digest, what)
        for _ in range(MAX_INDEX_DEPTH):
            if not isinstance(document, Index):
                return top_digest, document
            entry = manifests.choose(document, platform, what)
            body, content_type, digest = registry.manifest(remote.path, entry.digest, what)
            document = manifests.parse(body, content_type or entry.media_type, digest, what)
        if isinstance(document, Index):
            raise ManifestInvalid(f"{what}: image indexes nested deeper than {MAX_INDEX_DEPTH} levels")
        return top_digest, document

    def _pull_one(self, registry: Registry, remote: Remote, platform: Platform) -> Pulled:
        what = str(remote)
        if remote.tag:
            self.progress.message(f"{remote.tag}: Pulling from {remote.familiar_name}")
        top_digest, manifest = self._resolve(registry, remote, platform)
        raw_config = registry.small_blob(remote.path, manifest.config, MAX_JSON, f"{what}: config")
        ids = diff_ids(parse_config(raw_config, f"{what}: image config"))
        if len(ids) != len(manifest.layers):
            raise ManifestInvalid(
                f"{what}: the manifest lists {len(manifest.layers)} layers but the config has {len(ids)} diff ids"
            )
        before = {image.id for image in self.store.images.images()}
        tags = [remote.familiar_tag_ref] if remote.tag else []
        image, fetched = self._store_layers(registry, remote, manifest, raw_config, ids, [t for t in tags if t])
        self._record(remote, manifest, ids, image, top_digest)
        pulled = remote.with_digest(top_digest)
        self.progress.message(f"Digest: {top_digest}")
        status = "Image is up to date" if image.id in before and not fetched else "Downloaded newer image"
        self.progress.message(f"Status: {status} for {remote.familiar_tag_ref or pulled.familiar_digest_ref}")
        return Pulled(pulled, self.store.images.get(image.id), fetched)

    def _store_layers(
        self, registry: Registry, remote: Remote, manifest: Manifest, raw_config: bytes, ids: list[str], tags: list[str]
    ) -> tuple[Image, int]:
        layers = self.store.layers
        chains: list[str] = []
        for diff_id in ids:
            chains.append(chain_id(chains[-1] if chains else None, diff_id))
        with layers.lease() as lease:
            have = next((i for i in reversed(range(len(chains))) if layers.retain_if_present(chains[i], lease)), -1)
            for descriptor in manifest.layers[: have + 1]:
                self.progress.status(short(descriptor.digest), "Already exists")
            todo = list(range(have + 1, len(chains)))
            top = chains[have] if have >= 0 else None
            with _Downloads(self, registry, remote.path) as downloads:
                for index in todo:
                    downloads.schedule(manifest.layers[index])
                index = have + 1
                while index < len(chains):
                    if batch.applies(layers) and len(chains) - index > 1:
                        pending = [
                            batch.PendingLayer(
                                ids[i], functools.partial(downloads.layer_tar, manifest.layers[i], ids[i])
                            )
                            for i in range(index, len(chains))
                        ]
                        stored = batch.register_chain(layers, pending, top, lease=lease)
                    else:
                        stored = [downloads.apply(manifest.layers[index], top, ids[index], lease)]
                    for layer in stored:
                        if top is not None:
                            layers.release(top, lease)  # the new child keeps its parent alive
                        top = layer.chain_id
                    index += len(stored)
                for digest, record in downloads.committed.items():
                    self.records.add_blob(BlobRecord(digest, record[0], record[1], record[2], kept=True))
            image = self.store.images.add(raw_config, top, tags, lease=lease)
        return image, len(todo)

    def _record(self, remote: Remote, manifest: Manifest, ids: list[str], image: Image, top_digest: str) -> None:
        """Remember the manifest, the repo digest and where each known blob lives."""
        for descriptor, diff_id in zip(manifest.layers, ids, strict=True):
            known = self.records.blob(descriptor.digest)
            if known is not None and known.diff_id == diff_id:
                self.records.add_source(descriptor.digest, remote.domain, remote.path)
        self.records.add_manifest(ManifestRecord(manifest.digest, image.id, manifest.media_type, manifest.body))
        self.store.images.add_digest(remote.with_digest(top_digest).familiar_digest_ref, image.id)


class _Downloads:
    """The blob downloads of one image: scheduled up front, applied in order by the caller."""

    def __init__(self, puller: Puller, registry: Registry, repository: str) -> None:
        self.puller = puller
        self.registry = registry
        self.repository = repository
        self.progress = puller.progress
        self.pool = concurrent.futures.ThreadPoolExecutor(DOWNLOADS, thread_name_prefix="pull")
        self.cancel = threading.Event()
        self.ingests: dict[str, Ingest] = {}
        self.futures: dict[str, concurrent.futures.Future[None]] = {}
        self.committed: dict[str, tuple[str, str, int]] = {}  # digest -> (diff id, media type, size)

    def __enter__(self) -> _Downloads:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.cancel.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        for ingest in self.ingests.values():
            ingest.close()
            if exc_type is not None and ingest.committed and self.puller.records.blob(ingest.digest) is None:
                self.puller.blobs.path(ingest.digest).unlink(missing_ok=True)  # its layer was not kept either

    def schedule(self, descriptor: Descriptor) -> None:
        digest = descriptor.digest
        if digest in self.ingests or self.puller.blobs.has(digest):
            return
        ingest = self.puller.blobs.ingest(digest, descriptor.size)
        self.ingests[digest] = ingest
        self.futures[digest] = self.pool.submit(self._download, descriptor, ingest)

    def _download(self, descriptor: Descriptor, ingest: Ingest) -> None:
        key = short(descriptor.digest)
        self.progress.begin(key, "download", descriptor.size)
        try:
            self.registry.download(
                self.repository,
                descriptor,
                ingest,
                lambda n: self.progress.advance(key, "download", n),
                self.cancel.is_set,
            )
        except BaseException as exc:
            ingest.fail(exc)
            raise
        self.progress.status(key, "Download complete")

    def apply(self, descriptor: Descriptor, parent: str | None, diff_id: str, lease: str) -> Layer:
        """Extract one layer from its blob (arriving or kept) on top of `parent`, under `lease`.

        Should the download fail after all, the lease's release removes the layer.
        """
        with self.layer_tar(descriptor, diff_id) as plain:
            return self.puller.store.layers.register(plain, parent, expected_diff_id=diff_id, lease=lease)

    @contextlib.contextmanager
    def layer_tar(self, descriptor: Descriptor, diff_id: str) -> Iterator[Reader]:
        """The layer's uncompressed tar from its blob, arriving or kept (any thread may read it).

        When the block ends, the download itself must have checked out, even if the
        extraction stopped before the blob's end: only then is the blob kept.
        """
        key = short(descriptor.digest)
        self.progress.begin(key, "extract", descriptor.size)
        ingest = self.ingests.get(descriptor.digest)
        source: Any
        if ingest is not None:
            source = ingest.follower(lambda n: self.progress.advance(key, "extract", n))
        else:
            source = CountingReader(
                self.puller.blobs.path(descriptor.digest), lambda n: self.progress.advance(key, "extract", n)
            )
        what = f"layer {descriptor.digest}"
        try:
            plain, _ = decompressed(source, what)
            yield plain
        except DigestMismatch as exc:
            raise DigestMismatch(f"{what}: {exc}") from None
        except Cancelled:
            raise self._failure(descriptor.digest) from None
        finally:
            if isinstance(source, CountingReader):
                source.close()
        future = self.futures.get(descriptor.digest)
        if future is not None:
            future.result()
            self.committed[ingest.digest] = (diff_id, descriptor.media_type, descriptor.size)  # type: ignore[union-attr]
        self.progress.status(key, "Pull complete")

    def _failure(self, digest: str) -> BaseException:
        future = self.futures.get(digest)
        exc = future.exception() if future is not None and future.done() else None
        return exc or Cancelled("pull cancelled")
