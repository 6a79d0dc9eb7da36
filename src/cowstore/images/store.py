"""Images and tags in the store's SQLite database, each image holding its top layer.

An image row owns exactly one reference on its top layer's chain id (the layer store's
refcount); the child-to-parent links keep the lower layers alive. Removing the row and
releasing that reference happen under the store lock, so a concurrent `load` of the same
layers can never see them half deleted.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import NamedTuple

from cowstore.digest import sha256_bytes
from cowstore.images import reference
from cowstore.images.config import diff_ids, parse_config, parse_time
from cowstore.images.errors import ImageInUse, ImageNotFound, InvalidReference
from cowstore.layers import LayerStore


class Image(NamedTuple):
    """One stored image: its exact config bytes, top layer chain id and tags."""

    id: str
    raw_config: bytes
    top_layer: str | None
    created: float
    tags: tuple[str, ...]
    digests: tuple[str, ...] = ()  # `name@sha256:...` of the manifests it was pulled or pushed as

    @property
    def config(self) -> dict:
        return json.loads(self.raw_config)

    @property
    def short_id(self) -> str:
        return self.id.removeprefix("sha256:")[:12]

    @property
    def diff_ids(self) -> list[str]:
        return diff_ids(self.config)


class ImageStore:
    """The images of one store root; `container_users(image_id)` lists containers using one.

    The only module with SQL on the images, tags and repo_digests tables: others (the store's
    repairs, a pull) call `forget` and `add_digest`.
    """

    def __init__(self, layers: LayerStore, container_users: Callable[[str], list[str]] | None = None) -> None:
        self.layers = layers
        self.db = layers.db
        self.container_users = container_users or (lambda image_id: [])

    def _image(self, row: sqlite3.Row) -> Image:
        rows = self.db.query("SELECT ref FROM tags WHERE image_id = ? ORDER BY ref", (row["id"],))
        tags = tuple(r["ref"] for r in rows)
        rows = self.db.query("SELECT ref FROM repo_digests WHERE image_id = ? ORDER BY ref", (row["id"],))
        digests = tuple(r["ref"] for r in rows)
        return Image(row["id"], bytes(row["config"]), row["top_layer"], row["created"], tags, digests)

    def images(self) -> list[Image]:
        return [self._image(r) for r in self.db.query("SELECT * FROM images ORDER BY created DESC, id")]

    def get(self, ref: str) -> Image:
        """Find an image by tag, full id or unique id prefix (like `docker image inspect`)."""
        rows = self.db.query("SELECT * FROM images WHERE id = ?", (ref,))
        if not rows and reference.is_digest_ref(ref):
            rows = self.db.query(
                "SELECT images.* FROM images JOIN repo_digests ON repo_digests.image_id = images.id "
                "WHERE repo_digests.ref = ?",
                (reference.normalize_digest_ref(ref),),
            )
        elif not rows:
            try:
                normal = reference.normalize(ref)
            except InvalidReference:  # not a valid tag: it can still be an id prefix
                normal = None
            if normal is not None:
                rows = self.db.query(
                    "SELECT images.* FROM images JOIN tags ON tags.image_id = images.id WHERE tags.ref = ?", (normal,)
                )
        if not rows and reference.is_id_prefix(ref):
            prefix = ref if ref.startswith("sha256:") else f"sha256:{ref}"
            rows = self.db.query("SELECT * FROM images WHERE substr(id, 1, ?) = ?", (len(prefix), prefix))
            if len(rows) > 1:
                raise ImageNotFound(f"image id prefix {ref} is ambiguous: it matches {len(rows)} images")
        if not rows:
            raise ImageNotFound(f"No such image: {ref}")
        return self._image(rows[0])

    def size(self, image: Image) -> int:
        """Bytes of all the image's layers (Docker's image Size)."""
        return self.layers.total_size(image.top_layer) if image.top_layer else 0

    def add(self, raw_config: bytes, top_layer: str | None, tags: list[str], *, lease: str | None = None) -> Image:
        """Publish an image that owns one reference on `top_layer` (consumed here).

        With `lease`, that reference is taken over from the lease in the same
        transaction that records the image. When the same image (same config bytes) is
        already stored, the extra layer reference is released and only the tags are added.
        """
        parse_config(raw_config)
        refs = [reference.normalize(t) for t in tags]
        image_id = sha256_bytes(raw_config)
        with self.layers.lock.exclusive():
            exists = bool(self.db.query("SELECT 1 FROM images WHERE id = ?", (image_id,)))
            with self.db.transaction() as tx:
                if not exists:
                    tx.execute(
                        "INSERT INTO images (id, config, top_layer, created) VALUES (?, ?, ?, ?)",
                        (image_id, raw_config, top_layer, parse_time(json.loads(raw_config).get("created"))),
                    )
                    if lease is not None and top_layer is not None:
                        self.layers.hand_over(tx, lease, top_layer)
                for ref in refs:
                    tx.execute("INSERT OR REPLACE INTO tags (ref, image_id) VALUES (?, ?)", (ref, image_id))
            if exists and top_layer is not None:
                self.layers.release(top_layer, lease)
        return self.get(image_id)

    def tag(self, source: str, target: str) -> Image:
        image = self.get(source)
        ref = reference.normalize(target)
        with self.layers.lock.exclusive(), self.db.transaction() as tx:
            tx.execute("INSERT OR REPLACE INTO tags (ref, image_id) VALUES (?, ?)", (ref, image.id))
        return self.get(image.id)

    def add_digest(self, ref: str, image_id: str) -> None:
        """Record that manifest `name@sha256:...` names image `image_id` (Docker's RepoDigests)."""
        normal = reference.normalize_digest_ref(ref)
        with self.layers.lock.exclusive(), self.db.transaction() as tx:
            tx.execute("INSERT OR REPLACE INTO repo_digests (ref, image_id) VALUES (?, ?)", (normal, image_id))

    def tag_map(self) -> dict[str, str]:
        """Every tag and the image id it names."""
        return {r["ref"]: r["image_id"] for r in self.db.query("SELECT ref, image_id FROM tags")}

    def restore_tags(self, snapshot: dict[str, str]) -> None:
        """Put the tags back as `tag_map()` returned them (undoing a failed import)."""
        with self.layers.lock.exclusive(), self.db.transaction() as tx:
            tx.execute("DELETE FROM tags")
            for ref, image_id in snapshot.items():
                if tx.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone():
                    tx.execute("INSERT INTO tags (ref, image_id) VALUES (?, ?)", (ref, image_id))

    def remove(self, ref: str, *, force: bool = False) -> list[str]:
        """`docker rmi`: untag, and delete the image once no tag is left; returns what was done.

        Naming a tag of an image with several tags only removes that tag. Deleting an
        image that containers use, or an image with several tags by id, needs `force`.
        """
        with self.layers.lock.exclusive():
            image = self.get(ref)
            by_tag = self._is_tag_of(ref, image)
            if by_tag and reference.is_digest_ref(ref) and image.tags:
                normal = reference.normalize_digest_ref(ref)
                with self.db.transaction() as tx:
                    tx.execute("DELETE FROM repo_digests WHERE ref = ?", (normal,))
                return [f"Untagged: {normal}"]
            if by_tag and len(image.tags) > 1:
                normal = reference.normalize(ref)
                with self.db.transaction() as tx:
                    tx.execute("DELETE FROM tags WHERE ref = ?", (normal,))
                return [f"Untagged: {normal}"]
            if not by_tag and len(image.tags) > 1 and not force:
                raise ImageInUse(
                    f"unable to delete {image.short_id} (must be forced) - image is referenced in multiple repositories"
                )
            users = self.container_users(image.id)
            if users and not force:
                raise ImageInUse(
                    f"unable to remove image {ref} (must be forced) - image is being used by container {users[0]}"
                )
            with self.db.transaction() as tx:
                tx.execute("DELETE FROM tags WHERE image_id = ?", (image.id,))
                tx.execute("DELETE FROM images WHERE id = ?", (image.id,))
            done = [f"Untagged: {t}" for t in image.tags + image.digests] + [f"Deleted: {image.id}"]
            if image.top_layer is not None:
                done += [f"Deleted: {layer.chain_id}" for layer in self.layers.release(image.top_layer)]
            return done

    def forget(self, image_id: str) -> None:
        """Drop the record of an image whose layers are gone, tags included (store lock held).

        No layer reference is released: there is no layer left to hold it. The tags go
        with the row (ON DELETE CASCADE).
        """
        self.db.write("DELETE FROM images WHERE id = ?", (image_id,))

    def _is_tag_of(self, ref: str, image: Image) -> bool:
        try:
            if reference.is_digest_ref(ref):
                return reference.normalize_digest_ref(ref) in image.digests
            return reference.normalize(ref) in image.tags
        except InvalidReference:
            return False
