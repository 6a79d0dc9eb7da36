"""`cowstore push`: a stored image to a registry, under the same manifest digest every time.

Which bytes go up: an image pulled (or pushed) before has its manifest recorded; when
all of that manifest's layer blobs are kept here or known to exist on the destination
registry, and no other compression was asked for, the manifest is pushed again byte for
byte, so its digest does not change. Otherwise a fresh OCI manifest is built, and each
layer's blob is a kept one of the wanted compression or is compressed now
(deterministically) and
kept, so a second push is again the same bytes (compress.py).

Per blob, cheapest first: a HEAD finds it already there; a cross-repository mount
reuses it from another repository of the same registry where it was seen; else it is
uploaded, in one PUT when small and in resumable PATCH chunks when large. Up to three
layers go at once.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from dataclasses import dataclass

from cowstore.distribution import manifests
from cowstore.distribution.blobstore import BlobStore
from cowstore.distribution.client import Registry, Settings, read_file_at
from cowstore.distribution.compress import compress
from cowstore.distribution.errors import Denied, RegistryNotFound
from cowstore.distribution.manifests import OCI_CONFIG, Descriptor, Manifest
from cowstore.distribution.progress import Progress, Silent, short
from cowstore.distribution.pull import tidy
from cowstore.distribution.records import BlobRecord, DistributionRecords, ManifestRecord
from cowstore.errors import InvalidArgument
from cowstore.images import reference
from cowstore.images.reference import Remote, parse_remote
from cowstore.images.store import Image
from cowstore.store import Store

UPLOADS = 3
COMPRESSIONS = ("gzip", "zstd")


@dataclass(frozen=True)
class Pushed:
    reference: Remote  # the destination, with the manifest digest
    digest: str
    size: int  # of the manifest


@dataclass
class _Blob:
    """One layer blob of the manifest being pushed."""

    diff_id: str
    chain: str
    descriptor: Descriptor | None  # None until compressed
    kept: bool
    mount_from: list[str]
    compressed_now: bool = False


class _NotAvailable(Exception):
    """A recorded manifest's blob is neither kept here nor on the registry: build a fresh manifest."""


class Pusher:
    def __init__(self, store: Store, settings: Settings | None = None, progress: Progress | None = None) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.progress: Progress = progress or Silent()
        self.records = DistributionRecords(store.layers.db)
        self.blobs = BlobStore(store.root, self.records)
        self._tar_lock = threading.Lock()

    def push(self, source: str, destination: str | None = None, *, compression: str | None = None) -> Pushed:
        if compression is not None and compression not in COMPRESSIONS:
            raise InvalidArgument(f"unknown compression {compression!r}: use gzip or zstd")
        image = self.store.images.get(source)
        target = (destination or source).removeprefix("docker://")
        if destination is None and reference.is_id_prefix(source) and source not in image.tags:
            raise InvalidArgument(
                f"{source} is an image id: name the destination (cowstore push {source} HOST/NAME:TAG)"
            )
        dest = parse_remote(target)
        tidy(self.store)
        registry = Registry(dest, self.settings)
        try:
            self.progress.message(f"The push refers to repository [{dest.name}]")
            reused = self._recorded_plan(image, compression, dest)
            if reused is not None:
                try:
                    return self._push(registry, dest, image, *reused, compression or "gzip")
                except _NotAvailable:
                    pass
            kind = compression or "gzip"
            return self._push(registry, dest, image, None, self._fresh_plan(image, kind, dest), kind)
        finally:
            registry.close()

    # ---- planning ----------------------------------------------------------------------

    def _chains(self, image: Image) -> list[str]:
        if image.top_layer is None:
            return []
        return [layer.chain_id for layer in reversed(self.store.layers.chain(image.top_layer))]

    def _mount_sources(self, digest: str, dest: Remote) -> list[str]:
        return [repo for host, repo in self.records.sources(digest) if host == dest.domain and repo != dest.path]

    def _recorded_plan(
        self, image: Image, compression: str | None, dest: Remote
    ) -> tuple[Manifest, list[_Blob]] | None:
        chains = self._chains(image)
        for record in self.records.manifests_for(image.id):
            manifest = manifests.parse(record.body, record.media_type, record.digest, "recorded manifest")
            if not isinstance(manifest, Manifest) or len(manifest.layers) != len(chains):
                continue
            if compression and any(manifests.compression(d.media_type) != compression for d in manifest.layers):
                continue
            plan = []
            for descriptor, chain, diff_id in zip(manifest.layers, chains, image.diff_ids, strict=True):
                kept = self.blobs.has(descriptor.digest)
                on_registry = any(host == dest.domain for host, _ in self.records.sources(descriptor.digest))
                if not (kept or on_registry):
                    break
                plan.append(_Blob(diff_id, chain, descriptor, kept, self._mount_sources(descriptor.digest, dest)))
            else:
                return manifest, plan
        return None

    def _fresh_plan(self, image: Image, kind: str, dest: Remote) -> list[_Blob]:
        plan = []
        for chain, diff_id in zip(self._chains(image), image.diff_ids, strict=True):
            found = next(
                (
                    b
                    for b in self.records.blobs_for(diff_id)
                    if manifests.compression(b.media_type) == kind and self.blobs.has(b.digest)
                ),
                None,
            )
            if found is not None:
                descriptor = Descriptor(manifests.layer_media_type(kind), found.digest, found.size)
                plan.append(_Blob(diff_id, chain, descriptor, True, self._mount_sources(found.digest, dest)))
            else:
                plan.append(_Blob(diff_id, chain, None, False, [], compressed_now=True))
        return plan

    # ---- pushing -----------------------------------------------------------------------

    def _push(
        self, registry: Registry, dest: Remote, image: Image, manifest: Manifest | None, plan: list[_Blob], kind: str
    ) -> Pushed:
        with concurrent.futures.ThreadPoolExecutor(UPLOADS, thread_name_prefix="push") as pool:
            futures = [pool.submit(self._push_layer, registry, dest, blob, kind) for blob in plan]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        config = Descriptor(OCI_CONFIG, image.id, len(image.raw_config))
        if not registry.exists(dest.path, image.id):
            registry.upload(dest.path, image.id, config.size, lambda o, n: image.raw_config[o : o + n], lambda n: None)
        if manifest is not None:
            body, media_type = manifest.body, manifest.media_type
        else:
            layers = [blob.descriptor for blob in plan if blob.descriptor is not None]
            body, media_type = manifests.build(config, layers), manifests.OCI_MANIFEST
        digest = registry.put_manifest(dest.path, dest.reference, body, media_type)
        for blob in plan:
            assert blob.descriptor is not None
            if blob.compressed_now:
                d = blob.descriptor
                self.records.add_blob(BlobRecord(d.digest, blob.diff_id, d.media_type, d.size, kept=True))
            if self.records.blob(blob.descriptor.digest) is not None:
                self.records.add_source(blob.descriptor.digest, dest.domain, dest.path)
        self.records.add_manifest(ManifestRecord(digest, image.id, media_type, body))
        self.store.images.add_digest(dest.with_digest(digest).familiar_digest_ref, image.id)
        self.progress.message(f"{dest.reference}: digest: {digest} size: {len(body)}")
        return Pushed(dest.with_digest(digest), digest, len(body))

    def _push_layer(self, registry: Registry, dest: Remote, blob: _Blob, kind: str) -> None:
        if blob.descriptor is None:
            blob.descriptor = self._compress(blob.chain, kind)
            blob.kept = True
        digest = blob.descriptor.digest
        key = short(digest)
        if registry.exists(dest.path, digest):
            self.progress.status(key, "Layer already exists")
            return
        session = None
        for source in blob.mount_from:
            try:
                session = registry.mount(dest.path, digest, source)
            except (Denied, RegistryNotFound):
                continue
            if session is None:
                self.progress.status(key, f"Mounted from {source}")
                return
            break
        if not blob.kept:
            raise _NotAvailable(digest)
        self.progress.begin(key, "upload", blob.descriptor.size)
        registry.upload(
            dest.path,
            digest,
            blob.descriptor.size,
            read_file_at(self.blobs.path(digest)),
            lambda n: self.progress.advance(key, "upload", n),
            session,
        )
        self.progress.status(key, "Pushed")

    def _compress(self, chain: str, kind: str) -> Descriptor:
        """Compress a layer's tar into a kept blob, deterministically."""
        layer = self.store.layers.get(chain)
        key = short(layer.diff_id)
        with self._tar_lock:
            tar = self.store.layers.tar_stream(chain)
        ingest = self.blobs.ingest("", None)
        try:
            with tar:
                total = os.fstat(tar.fileno()).st_size
                self.progress.begin(key, "compress", total)
                compress(tar, ingest.write, kind, lambda n: self.progress.advance(key, "compress", n))
            digest = ingest.finish()
            return Descriptor(manifests.layer_media_type(kind), digest, ingest.written)
        finally:
            ingest.close()
