"""The metadata of a Docker data root (moby 1.10 to 24): images, layers, containers.

Everything below `image/<driver>/` and `containers/` is read, never written:
- `imagedb/content/sha256/<id>`: an image's config, exactly the bytes its id hashes;
- `repositories.json`: `{"Repositories": {name: {"name:tag": "sha256:<id>"}}}`;
- `layerdb/sha256/<chain id>/{diff,parent,size,cache-id,tar-split.json.gz}`: a
  read-only layer, `cache-id` naming its directory or device in the driver's storage;
- `layerdb/mounts/<container id>/{mount-id,init-id,parent}`: a container's layers;
- `containers/<id>/config.v2.json`: its name, image and the driver that made it.

A data root may come from another machine or a damaged disk, so every value read is
checked (digests, ids that will become path components, sizes) and a bad object is
reported as a `Problem` without stopping the others.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from dataclasses import dataclass

from cowstore.digest import chain_id, check_digest, sha256_bytes
from cowstore.errors import Corrupt, InvalidArgument, InvalidDigest, NotFound

DRIVERS = ("aufs", "btrfs", "devicemapper", "overlay", "overlay2", "vfs")
_MAX_JSON = 16 * 1024 * 1024
_STORAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


class NotADockerRoot(InvalidArgument):
    """The path holds no Docker image store, or several and none was chosen."""


class BadObject(Corrupt):
    """An image, layer or container of the data root is damaged or inconsistent."""


@dataclass(frozen=True)
class Problem:
    """A bad object found while reading: what it is, which one, and why."""

    kind: str  # "image", "layer", "container"
    id: str
    reason: str


@dataclass(frozen=True)
class DockerLayer:
    chain_id: str
    diff_id: str
    parent: str | None
    cache_id: str  # the layer's id in the driver's storage
    size: int
    tar_split: pathlib.Path | None


@dataclass(frozen=True)
class DockerImage:
    id: str
    raw_config: bytes
    tags: tuple[str, ...]
    diff_ids: tuple[str, ...]

    @property
    def top_chain(self) -> str | None:
        top = None
        for diff_id in self.diff_ids:
            top = chain_id(top, diff_id)
        return top

    @property
    def created(self) -> str:
        value = json.loads(self.raw_config).get("created")
        return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class DockerContainer:
    id: str
    name: str
    image_id: str
    image_ref: str
    driver: str
    mount_id: str
    init_id: str | None
    parent: str | None  # chain id of the image's top layer


def read_bytes(path: pathlib.Path, limit: int = _MAX_JSON) -> bytes:
    """A small file of the data root, refusing symlinks and oversized files."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"{path} is missing") from None
    except OSError as exc:
        raise BadObject(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise BadObject(f"{path} is larger than {limit} bytes")
    return data


def _text(path: pathlib.Path) -> str:
    return read_bytes(path, 4096).decode("ascii", "replace").strip()


def _json(path: pathlib.Path) -> dict:
    try:
        value = json.loads(read_bytes(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadObject(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadObject(f"{path} is not a JSON object")
    return value


def _digest(value: str, what: str) -> str:
    try:
        return check_digest(value)
    except InvalidDigest as exc:
        raise BadObject(f"{what}: {exc}") from None


def storage_id(value: str, what: str) -> str:
    """An id that names a directory or device of the driver: one safe path component."""
    if not _STORAGE_ID.fullmatch(value):
        raise BadObject(f"{what}: {value!r} is not a valid storage id")
    return value


def detect_driver(path: pathlib.Path, requested: str | None = None) -> str:
    """The driver whose image store the data root holds (the one Docker would pick)."""
    if not (path / "image").is_dir():
        raise NotADockerRoot(f"{path} is not a Docker data root: it has no image/ directory")
    found = [name for name in DRIVERS if (path / "image" / name).is_dir()]
    if requested is not None:
        if requested not in found:
            raise NotADockerRoot(f"{path} holds no image store of the {requested} driver (found: {found or 'none'})")
        return requested
    if not found:
        raise NotADockerRoot(f"{path} has no image store of a known driver ({', '.join(DRIVERS)})")
    with_storage = [name for name in found if (path / name).is_dir() and any((path / name).iterdir())]
    candidates = with_storage or found
    if len(candidates) > 1:
        raise NotADockerRoot(
            f"{path} holds image stores of several drivers ({', '.join(candidates)}): choose one with --source-driver"
        )
    return candidates[0]


class DockerRoot:
    """The metadata of one data root, for the driver that wrote it."""

    def __init__(self, path: str | os.PathLike, driver: str | None = None) -> None:
        self.path = pathlib.Path(path).absolute()
        self.driver = detect_driver(self.path, driver)
        self.store = self.path / "image" / self.driver
        self.home = self.path / self.driver

    # ---- images -----------------------------------------------------------------

    def tags(self) -> dict[str, list[str]]:
        """Image id -> its tags (digest references are left out: cowstore keeps tags only)."""
        path = self.store / "repositories.json"
        if not path.exists():
            return {}
        repositories = _json(path).get("Repositories") or {}
        found: dict[str, list[str]] = {}
        for refs in repositories.values() if isinstance(repositories, dict) else ():
            for ref, image_id in (refs or {}).items():
                if isinstance(ref, str) and isinstance(image_id, str) and "@" not in ref:
                    found.setdefault(image_id, []).append(ref)
        return found

    def images(self) -> tuple[list[DockerImage], list[Problem]]:
        content = self.store / "imagedb" / "content" / "sha256"
        tags = self.tags()
        images, problems = [], []
        for entry in sorted(content.iterdir()) if content.is_dir() else []:
            image_id = f"sha256:{entry.name}"
            try:
                images.append(self._image(entry, image_id, tags.get(image_id, [])))
            except (BadObject, NotFound) as exc:
                problems.append(Problem("image", image_id, str(exc)))
        return images, problems

    def _image(self, path: pathlib.Path, image_id: str, tags: list[str]) -> DockerImage:
        _digest(image_id, f"image {path.name}")
        raw = read_bytes(path)
        if sha256_bytes(raw) != image_id:
            raise BadObject(f"its config hashes to {sha256_bytes(raw)}, not to its id")
        try:
            config = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadObject(f"its config is not valid JSON: {exc}") from None
        rootfs = config.get("rootfs") if isinstance(config, dict) else None
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list):
            raise BadObject("its config has no rootfs.diff_ids")
        return DockerImage(image_id, raw, tuple(sorted(tags)), tuple(_digest(d, "diff id") for d in diff_ids))

    # ---- layers -----------------------------------------------------------------

    def layer(self, chain: str) -> DockerLayer:
        """The read-only layer with this chain id; BadObject if it is missing or damaged."""
        path = self.store / "layerdb" / "sha256" / _digest(chain, "chain id").removeprefix("sha256:")
        try:
            diff_id = _digest(_text(path / "diff"), f"layer {chain}")
            parent = _digest(_text(path / "parent"), f"layer {chain}") if (path / "parent").exists() else None
            cache_id = storage_id(_text(path / "cache-id"), f"layer {chain} cache-id")
            size_text = _text(path / "size") if (path / "size").exists() else "0"
        except NotFound as exc:
            raise BadObject(f"layer {chain} is missing from layerdb: {exc}") from None
        if chain_id(parent, diff_id) != chain:
            raise BadObject(f"layer {chain}: its parent and diff id give another chain id")
        split = path / "tar-split.json.gz"
        size = int(size_text) if size_text.isdigit() else 0
        return DockerLayer(chain, diff_id, parent, cache_id, size, split if split.exists() else None)

    def chain(self, image: DockerImage) -> list[DockerLayer]:
        """An image's layers, bottom to top."""
        layers, top = [], None
        for diff_id in image.diff_ids:
            top = chain_id(top, diff_id)
            layers.append(self.layer(top))
        return layers

    # ---- containers -------------------------------------------------------------

    def containers(self) -> tuple[list[DockerContainer], list[Problem]]:
        directory = self.path / "containers"
        found, problems = [], []
        for entry in sorted(directory.iterdir()) if directory.is_dir() else []:
            try:
                found.append(self._container(entry))
            except (BadObject, NotFound) as exc:
                problems.append(Problem("container", entry.name, str(exc)))
        return found, problems

    def _container(self, path: pathlib.Path) -> DockerContainer:
        if not _CONTAINER_ID.fullmatch(path.name):
            raise BadObject("not a container id")
        config = _json(path / "config.v2.json")
        name = str(config.get("Name") or "").lstrip("/")
        image_id = _digest(str(config.get("Image") or ""), f"container {path.name} image")
        ref = (config.get("Config") or {}).get("Image") if isinstance(config.get("Config"), dict) else None
        driver = str(config.get("Driver") or "")
        mounts = self.store / "layerdb" / "mounts" / path.name
        mount_id = init_id = parent = None
        if driver == self.driver:
            try:
                mount_id = storage_id(_text(mounts / "mount-id"), "mount-id")
            except NotFound:
                raise BadObject("its layers are missing from layerdb/mounts") from None
            if (mounts / "init-id").exists():
                init_id = storage_id(_text(mounts / "init-id"), "init-id")
            if (mounts / "parent").exists():
                parent = _digest(_text(mounts / "parent"), "parent")
        ref = ref if isinstance(ref, str) else image_id
        return DockerContainer(path.name, name, image_id, ref, driver, mount_id or "", init_id, parent)
