"""Containers: an image's layers plus an `-init` layer and a read-write layer on top.

A container here is storage only (nothing runs): `create` prepares the layers, `mount`
makes the merged root available for a runtime, and `diff`, `commit` and `export` read
what was written. The `-init` layer holds the mount targets a runtime bind-mounts over
(`/proc`, `/etc/hosts`, ...), so they never show in a diff or a commit.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pathlib
import re
import sqlite3
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from cowstore.digest import random_id
from cowstore.errors import AlreadyExists, InUse, InvalidOption, LayerNotFound, NotFound, space_errors
from cowstore.images import Image, ImageNotFound, ImageStore
from cowstore.images.config import committed_config, encode
from cowstore.layers import LayerStore
from cowstore.layers.faults import fault

if TYPE_CHECKING:
    from cowstore.archive.changes import Change

ENV_FILE = "/.cowstoreenv"
# What Docker's setupInitLayer creates (daemon/initlayer), with our own env marker file.
INIT_PATHS: dict[str, str] = {
    "/dev/pts": "dir",
    "/dev/shm": "dir",
    "/proc": "dir",
    "/sys": "dir",
    ENV_FILE: "file",
    "/etc/resolv.conf": "file",
    "/etc/hosts": "file",
    "/etc/hostname": "file",
    "/dev/console": "file",
    "/etc/mtab": "/proc/mounts",
}
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
_ID = re.compile(r"[0-9a-f]{64}")
_ADJECTIVES = ("brave", "calm", "eager", "fond", "gentle", "happy", "jolly", "keen", "lucid", "merry", "quiet", "witty")
_NOUNS = ("bell", "curie", "darwin", "euler", "gauss", "hopper", "knuth", "lovelace", "noether", "ritchie", "turing")


def _random_name(suffix: bool = False) -> str:
    """`adjective_noun` like Docker's, with a number after it when `suffix`. From os.urandom:
    the `random` module is not worth its import to a `create` for two picks."""
    a, n, number = (int.from_bytes(os.urandom(4), "big") for _ in range(3))
    name = f"{_ADJECTIVES[a % len(_ADJECTIVES)]}_{_NOUNS[n % len(_NOUNS)]}"
    return f"{name}{number % 10**6 + 1}" if suffix else name


class ContainerNotFound(NotFound):
    """No container has this name, id or id prefix."""


class ContainerExists(AlreadyExists):
    """The container name is taken."""


class ContainerMounted(InUse):
    """The container is mounted and the operation was not forced."""


class Container(NamedTuple):
    id: str
    name: str
    image_id: str
    image_ref: str
    created: float

    @property
    def short_id(self) -> str:
        return self.id[:12]


def init_layer(root: pathlib.Path) -> None:
    """Fill an `-init` layer like Docker: unlink non-directories on each path, then create.

    Unlinking every component first means no symlink shipped in the image (say
    `/dev/shm -> /run/shm`) can redirect a creation outside the layer.
    """
    for path, kind in INIT_PATHS.items():
        parts = path.strip("/").split("/")
        current = root
        for part in parts:
            current = current / part
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
                os.unlink(current)
        target = root / path.lstrip("/")
        if os.path.lexists(target):
            continue
        for parent in reversed(target.relative_to(root).parents[:-1]):
            directory = root / parent
            if not os.path.lexists(directory):
                os.mkdir(directory)
                os.chmod(directory, 0o755)
        if kind == "dir":
            os.mkdir(target)
            os.chmod(target, 0o755)
        elif kind == "file":
            fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o755)
            os.fchmod(fd, 0o755)
            os.close(fd)
        else:
            os.symlink(kind, target)


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat().replace("+00:00", "Z")


class ContainerStore:
    """The containers of one store root, backed by the layer store's read-write layers.

    The only module with SQL on the containers table: others (the store's repairs) call `forget`.
    """

    def __init__(self, layers: LayerStore, images: ImageStore) -> None:
        self.layers = layers
        self.images = images
        self.db = layers.db

    def _row(self, row: sqlite3.Row) -> Container:
        return Container(row["id"], row["name"], row["image_id"], row["image_ref"], row["created"])

    def containers(self) -> list[Container]:
        return [self._row(r) for r in self.db.query("SELECT * FROM containers ORDER BY created DESC, name")]

    def users_of(self, image_id: str) -> list[str]:
        """Names of the containers created from an image (for `rmi`)."""
        rows = self.db.query("SELECT name FROM containers WHERE image_id = ? ORDER BY name", (image_id,))
        return [r["name"] for r in rows]

    def get(self, ref: str) -> Container:
        """By name, full id or unique id prefix (like `docker container inspect`)."""
        rows = self.db.query("SELECT * FROM containers WHERE id = ? OR name = ?", (ref, ref))
        if not rows and re.fullmatch(r"[0-9a-f]{1,64}", ref):
            rows = self.db.query("SELECT * FROM containers WHERE substr(id, 1, ?) = ?", (len(ref), ref))
            if len(rows) > 1:
                raise ContainerNotFound(f"container id prefix {ref} is ambiguous: it matches {len(rows)} containers")
        if not rows:
            raise ContainerNotFound(f"No such container: {ref}")
        return self._row(rows[0])

    def _new_name(self) -> str:
        taken = {r["name"] for r in self.db.query("SELECT name FROM containers")}
        for _ in range(20):
            name = _random_name()
            if name not in taken:
                return name
        return _random_name(suffix=True)

    def create(
        self,
        image_ref: str,
        *,
        name: str | None = None,
        storage_opts: Mapping[str, str] | None = None,
        container_id: str | None = None,
    ) -> Container:
        """Create the container's `-init` and read-write layers on top of the image.

        `container_id` keeps the id a container had elsewhere (an import from Docker).

        The store lock is held across the layer creation and the record, so that no
        other process ever sees one without the other (which opening a store treats as
        a crash to repair). The price: on vfs and legacy overlay, whose container
        layers are copies, other writers wait for the copy.
        """
        image = self.images.get(image_ref)
        if name is not None and not _NAME.fullmatch(name):
            raise InvalidOption(f"invalid container name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        if container_id is not None and not _ID.fullmatch(container_id):
            raise InvalidOption(f"invalid container id {container_id!r}: 64 lowercase hex digits are needed")
        with self.layers.lock.exclusive():
            name = name or self._new_name()
            if self.db.query("SELECT 1 FROM containers WHERE name = ?", (name,)):
                raise ContainerExists(
                    f"the container name {name!r} is already in use; remove that container or pick another name"
                )
            if container_id is not None and self.db.query("SELECT 1 FROM containers WHERE id = ?", (container_id,)):
                raise ContainerExists(f"a container with id {container_id} exists already")
            image_ref = image.tags[0] if image.tags else image.id
            container = Container(container_id or random_id(), name, image.id, image_ref, time.time())

            def record(tx: sqlite3.Connection) -> None:
                tx.execute(
                    "INSERT INTO containers (id, name, image_id, image_ref, created) VALUES (?, ?, ?, ?, ?)",
                    (container.id, container.name, container.image_id, container.image_ref, container.created),
                )

            self.layers.create_rw(
                container.id, image.top_layer, init=init_layer, storage_opts=storage_opts, on_ready=record
            )
        return container

    def apply_changes(self, ref: str, stream: BinaryIO) -> int:
        """Apply a changeset tar to the container's read-write layer (as if it had written it)."""
        container = self.get(ref)
        with self.layers.lock.exclusive():
            if self.mount_count(container) > 0:
                raise ContainerMounted(f"container {container.name} is mounted; umount it before applying changes")
            return self.layers.rw_apply(container.id, stream)

    def mount(self, ref: str) -> pathlib.Path:
        return self.layers.mount(self.get(ref).id)

    def umount(self, ref: str) -> None:
        self.layers.unmount(self.get(ref).id)

    def mount_count(self, container: Container) -> int:
        return self.layers.get_rw(container.id).mount_count

    def diff(self, ref: str) -> list[Change]:
        return sorted(self.layers.rw_changes(self.get(ref).id), key=lambda c: c.path)

    def size(self, container: Container) -> tuple[int, int]:
        """(bytes the container wrote, virtual size = that plus its image's layers)."""
        rw = self.layers.get_rw(container.id)
        written = self.layers.rw_size(container.id)
        base = self.layers.total_size(rw.parent) if rw.parent else 0
        return written, written + base

    def _base_config(self, container: Container) -> dict:
        try:
            return self.images.get(container.image_id).config
        except ImageNotFound:  # the image was removed with force: rebuild from the layer chain
            rw = self.layers.get_rw(container.id)
            chain = self.layers.chain(rw.parent) if rw.parent else []
            diff_ids = [layer.diff_id for layer in reversed(chain)]
            return {"os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}

    def commit(self, ref: str, *, tag: str | None = None, message: str = "", author: str = "") -> Image:
        """A new image: the container's image plus one layer holding its changes."""
        container = self.get(ref)
        rw = self.layers.get_rw(container.id)
        base = self._base_config(container)
        with space_errors(f"committing {container.name}"), self.layers.lease() as lease:
            with contextlib.closing(self.layers.rw_diff(container.id)) as stream:
                layer = self.layers.register(stream, rw.parent, lease=lease)
            fault("commit:after-register")
            config = committed_config(base, layer.diff_id, container=container.id, comment=message, author=author)
            return self.images.add(encode(config), layer.chain_id, [tag] if tag else [], lease=lease)

    def export(self, ref: str, out: BinaryIO) -> None:
        """The container's whole merged filesystem as one flat tar (`docker export`)."""
        from cowstore.archive.export import tar_directory

        container = self.get(ref)
        root = self.layers.mount(container.id)
        try:
            tar_directory(root, out)
        finally:
            self.layers.unmount(container.id)

    def inspect(self, ref: str, *, with_size: bool = True) -> dict[str, Any]:
        container = self.get(ref)
        rw = self.layers.get_rw(container.id)
        info: dict[str, Any] = {
            "Id": container.id,
            "Name": container.name,
            "Created": _iso(container.created),
            "Image": container.image_id,
            "Config": {"Image": container.image_ref},
            "MountCount": rw.mount_count,
            "GraphDriver": {"Name": self.layers.driver.name, "Data": self.layers.rw_metadata(container.id)},
        }
        if rw.mount_count:
            info["MountPath"] = str(self.layers.driver.get(rw.mount_id))
            self.layers.driver.put(rw.mount_id)
        if with_size:
            info["SizeRw"], info["SizeRootFs"] = self.size(container)
        return info

    def remove(self, ref: str, *, force: bool = False) -> Container:
        """Delete the container's layers; a mounted container needs `force` (it is unmounted)."""
        container = self.get(ref)
        with self.layers.lock.exclusive():
            try:
                count = self.layers.get_rw(container.id).mount_count
            except LayerNotFound:
                count = -1  # its layers are already gone (an interrupted rm): drop the record
            if count > 0 and not force:
                raise ContainerMounted(
                    f"container {container.name} is mounted {count} time(s); umount it first or use --force"
                )
            if count >= 0:
                self.layers.remove_rw(container.id, force=True, on_removing=lambda tx: self._delete(tx, container.id))
            else:
                self.forget(container.id)
        return container

    def _delete(self, tx: sqlite3.Connection, container_id: str) -> None:
        """Within the transaction `tx` that marks the container's layers for removal: its record goes."""
        tx.execute("DELETE FROM containers WHERE id = ?", (container_id,))

    def forget(self, container_id: str) -> None:
        """Drop a container's record, once its layers are gone (store lock held)."""
        self.db.write("DELETE FROM containers WHERE id = ?", (container_id,))

    def prune(self) -> tuple[list[Container], int]:
        """Remove every unmounted container; returns them and the bytes they had written."""
        removed, reclaimed = [], 0
        for container in self.containers():
            if self.mount_count(container) > 0:
                continue
            reclaimed += self.layers.rw_size(container.id)
            removed.append(self.remove(container.id))
        return removed, reclaimed
