"""Property-based layer stacks, applied through every driver and checked against a model.

Hypothesis generates stacks of layers (files, directories, symlinks, hard links,
whiteouts, opaque directories, modes, owners). For each stack:
(a) applying the layers through the driver gives the tree the in-memory model predicts,
(b) the driver's diff of each layer against its parent, applied to a fresh layer on that
    parent, reproduces the layer, and
(c) the layer store gives back every imported tar byte for byte (on vfs, the reference).
"""

from __future__ import annotations

import io
import os
import pathlib
import stat
import tarfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cowstore.drivers import Driver, open_driver
from cowstore.layers import LayerStore

from .helpers import mounted, new_id

NAMES = ["a", "b", "c", "d"]

# A model node: ("file", content, mode, uid) | ("dir", mode, uid) | ("symlink", target)
Model = dict[str, tuple]

paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
ops = st.one_of(
    st.tuples(
        st.just("file"),
        paths,
        st.binary(max_size=64),
        st.sampled_from([0o644, 0o755, 0o600, 0o4755]),
        st.sampled_from([0, 1000]),
    ),
    st.tuples(st.just("dir"), paths, st.sampled_from([0o755, 0o700, 0o1777]), st.sampled_from([0, 1000])),
    st.tuples(st.just("symlink"), paths, st.sampled_from(["a", "../b", "/c/d", "nowhere"])),
    st.tuples(st.just("hardlink"), paths, paths),
    st.tuples(st.just("whiteout"), paths),
    st.tuples(st.just("opaque"), paths),
)
stacks = st.lists(st.lists(ops, min_size=1, max_size=8), min_size=1, max_size=4)


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def plan_layer(model: Model, layer_ops: list[tuple]) -> tuple[list[tuple], set[str], set[str]]:
    """Turn random ops into a valid OCI changeset: entries (with parent dirs), whiteouts, opaques."""
    entries: dict[str, tuple] = {}
    for op in layer_ops:
        kind, path = op[0], op[1]
        if kind in ("whiteout", "opaque") or path in entries:
            continue
        if any(a in entries and entries[a][0] != "dir" for a in _ancestors(path)):
            continue
        if kind == "hardlink":
            target = op[2]
            if target not in entries or entries[target][0] != "file" or target == path:
                continue
        for a in _ancestors(path):
            entries.setdefault(a, ("dir", 0o755, 0))
        if kind == "dir" and path in entries:
            continue
        if any(p.startswith(path + "/") for p in entries):
            continue
        entries[path] = op[0:1] + op[2:] if kind != "hardlink" else ("hardlink", op[2])
    whiteouts, opaques = set(), set()
    for op in layer_ops:
        kind, path = op[0], op[1]
        if kind == "whiteout" and path not in entries and not any(p.startswith(path + "/") for p in entries):
            parent = "/".join(path.split("/")[:-1])
            if (not parent or entries.get(parent, ("",))[0] == "dir") and all(
                entries.get(a, ("dir",))[0] == "dir" for a in _ancestors(path)
            ):
                whiteouts.add(path)
        if kind == "opaque" and entries.get(path, ("",))[0] == "dir":
            opaques.add(path)
    for w in whiteouts:
        for a in _ancestors(w):
            entries.setdefault(a, ("dir", 0o755, 0))
    return list(entries.items()), whiteouts, opaques


def apply_model(model: Model, entries: list[tuple], whiteouts: set[str], opaques: set[str]) -> Model:
    new = dict(model)
    for d in opaques:
        for p in [p for p in new if p.startswith(d + "/")]:
            del new[p]
    for w in whiteouts:
        for p in [p for p in new if p == w or p.startswith(w + "/")]:
            del new[p]
    for path, node in entries:
        existing = new.get(path)
        if existing is not None and not (existing[0] == "dir" and node[0] == "dir"):
            for p in [p for p in new if p == path or p.startswith(path + "/")]:
                del new[p]
        for a in _ancestors(path):
            if new.get(a, ("dir",))[0] != "dir":
                del new[a]
            new.setdefault(a, ("dir", 0o755, 0))
        if node[0] == "hardlink":
            target = new[node[1]]
            new[path] = target
        else:
            new[path] = node
    return new


def layer_tar(entries: list[tuple], whiteouts: set[str], opaques: set[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, node in entries:
            info = tarfile.TarInfo(path)
            info.mtime = 1_600_000_000
            if node[0] == "file":
                info.size, info.mode, info.uid = len(node[1]), node[2], node[3]
                tar.addfile(info, io.BytesIO(node[1]))
                continue
            if node[0] == "dir":
                info.type, info.mode, info.uid = tarfile.DIRTYPE, node[1], node[2]
            elif node[0] == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, node[1], 0o777
            else:
                info.type, info.linkname = tarfile.LNKTYPE, node[1]
            tar.addfile(info)
            if node[0] == "dir" and path in opaques:
                marker = tarfile.TarInfo(f"{path}/.wh..wh..opq")
                tar.addfile(marker, io.BytesIO(b""))
        for w in sorted(whiteouts):
            parent, _, base = w.rpartition("/")
            marker = tarfile.TarInfo(f"{parent}/.wh.{base}" if parent else f".wh.{base}")
            tar.addfile(marker, io.BytesIO(b""))
    return buf.getvalue()


def tree(root: pathlib.Path) -> Model:
    found: Model = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = pathlib.Path(dirpath) / name
            rel = str(full.relative_to(root))
            if rel == "lost+found":
                continue
            st_ = os.lstat(full)
            if stat.S_ISDIR(st_.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st_.st_mode), st_.st_uid)
            elif stat.S_ISLNK(st_.st_mode):
                found[rel] = ("symlink", os.readlink(full))
            else:
                found[rel] = ("file", full.read_bytes(), stat.S_IMODE(st_.st_mode), st_.st_uid)
        dirnames[:] = [d for d in dirnames if not (d == "lost+found" and pathlib.Path(dirpath) == root)]
    return found


def build_stack(stack: list[list[tuple]]) -> list[tuple[bytes, Model]]:
    model: Model = {}
    layers = []
    for layer_ops in stack:
        entries, whiteouts, opaques = plan_layer(model, layer_ops)
        model = apply_model(model, entries, whiteouts, opaques)
        layers.append((layer_tar(entries, whiteouts, opaques), model))
    return layers


PROPERTY_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(stack=stacks)
def test_applied_stack_matches_model_and_diff_round_trips(driver: Driver, stack: list[list[tuple]]) -> None:
    created: list[str] = []
    try:
        parent = None
        for data, expected in build_stack(stack):
            layer = new_id()
            driver.create(layer, parent)
            created.append(layer)
            driver.apply_diff(layer, parent, io.BytesIO(data))
            with mounted(driver, layer) as root:
                assert tree(root) == expected
            copy = new_id()
            driver.create(copy, parent)
            created.append(copy)
            with driver.diff(layer, parent) as stream:
                driver.apply_diff(copy, parent, stream)
            with mounted(driver, copy) as root:
                assert tree(root) == expected
            parent = layer
    finally:
        for layer in reversed(created):
            driver.remove(layer)


@PROPERTY_SETTINGS
@given(stack=stacks)
def test_store_export_is_byte_identical(tmp_path_factory, stack: list[list[tuple]]) -> None:
    root = tmp_path_factory.mktemp("store")
    store = LayerStore(root, open_driver("vfs", root / "vfs"), sync=False)
    try:
        parent = None
        for data, _ in build_stack(stack):
            layer = store.register(io.BytesIO(data), parent)
            assert store.tar_stream(layer.chain_id).read() == data
            parent = layer.chain_id
    finally:
        store.close()
