"""Push compression: deterministic, readable by any gzip reader, cheap on incompressible bytes."""

from __future__ import annotations

import gzip
import io
import os

import pytest
import zstandard

from cowstore.distribution.compress import MEMBER, compress


def _compressed(data: bytes, kind: str) -> bytes:
    out = io.BytesIO()
    compress(io.BytesIO(data), out.write, kind, lambda n: None)
    return out.getvalue()


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_same_input_same_blob_and_round_trip(kind: str) -> None:
    data = b"layer text " * 700_000 + os.urandom(MEMBER + 123)
    blob = _compressed(data, kind)
    assert blob == _compressed(data, kind)
    plain = gzip.decompress(blob) if kind == "gzip" else zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    assert plain == data


def test_incompressible_members_are_stored_and_text_is_deflated() -> None:
    noise = os.urandom(2 * MEMBER)
    assert len(_compressed(noise, "gzip")) < len(noise) + 1024  # stored: no deflate effort, tiny overhead
    text = b"the same words again " * 200_000
    assert len(_compressed(text, "gzip")) < len(text) // 20


def test_empty_layer_is_a_valid_gzip() -> None:
    assert gzip.decompress(_compressed(b"", "gzip")) == b""
