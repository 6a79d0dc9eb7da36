"""A bounded fuzz run over the tar reader and applier (hypothesis, runs in CI).

Valid layer tars are mutated (bytes flipped, runs spliced in, truncated, extended);
whatever the bytes, applying them either succeeds inside the layer or raises
ArchiveError: never another exception, a hang, or a write outside the root.
"""

from __future__ import annotations

import io
import os
import pathlib
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cowstore.archive import apply_layer
from cowstore.archive.tarstream import Limits
from cowstore.errors import ArchiveError
from cowstore.host import fsutil

from ..support.tars import E, build

SEEDS = [
    build(E("a", data=b"hello"), E("d", kind="dir"), E("d/f", data=b"x" * 700), E("l", kind="symlink", target="d/f")),
    build(E("x" * 150, data=b"long name"), E("h", kind="link", target="x" * 150), E(".wh.gone"), E("d/.wh..wh..opq")),
    build(E("p", data=b"pax", pax={"SCHILY.xattr.user.k": "v", "mtime": "1.25"}), E("fifo", kind="fifo")),
]
LIMITS = Limits(max_entries=1000, max_bytes=1 << 20, max_extended_header=1 << 16)


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        action = draw(st.sampled_from(["flip", "splice", "truncate", "extend"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif action == "splice":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif action == "truncate":
            del data[pos:]
        else:
            data += draw(st.binary(max_size=1024))
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated())
def test_mutated_tars_fail_cleanly(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        top = pathlib.Path(tmp)
        layer = top / "layer"
        layer.mkdir()
        try:
            apply_layer(io.BytesIO(data), layer, limits=LIMITS)
        except ArchiveError:
            pass
        assert os.listdir(top) == ["layer"]
        fsutil.remove_tree(layer)
