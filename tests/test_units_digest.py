"""Small pure helpers: Docker's size parser and printer, digests and chain ids."""

import pytest

from cowstore.digest import EMPTY_LAYER_DIGEST, chain_id, check_digest, random_id, sha256_bytes
from cowstore.errors import InvalidDigest, InvalidOption
from cowstore.units import human_size, parse_size


@pytest.mark.parametrize(
    "text,value",
    [
        ("50M", 52_428_800),
        ("10G", 10 * 1024**3),
        ("64k", 65536),
        ("1024", 1024),
        ("1.5KiB", 1536),
        ("2gb", 2 * 1024**3),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


def test_parse_size_rejects_garbage() -> None:
    with pytest.raises(InvalidOption, match="invalid size 'ten gigs'"):
        parse_size("ten gigs")


@pytest.mark.parametrize(
    "value,text",
    [(65536, "65.54kB"), (10 * 1024**3, "10.74GB"), (100 * 1024**3, "107.4GB"), (2 * 1024**3, "2.147GB"), (0, "0B")],
)
def test_human_size_matches_docker(value: int, text: str) -> None:
    assert human_size(value) == text


def test_empty_layer_digest() -> None:
    assert sha256_bytes(bytes(1024)) == EMPTY_LAYER_DIGEST


def test_chain_id_definition() -> None:
    d1, d2 = sha256_bytes(b"1"), sha256_bytes(b"2")
    assert chain_id(None, d1) == d1
    assert chain_id(d1, d2) == sha256_bytes(f"{d1} {d2}".encode())


@pytest.mark.parametrize(
    "bad", ["sha256:../../x", "sha256:" + "A" * 64, "sha256:abc", "md5:" + "0" * 32, "", "sha256:" + "0" * 65]
)
def test_bad_digests_rejected(bad: str) -> None:
    with pytest.raises(InvalidDigest):
        check_digest(bad)


def test_random_id_never_numeric_prefix() -> None:
    for _ in range(200):
        value = random_id()
        assert len(value) == 64 and not value[:12].isdigit()
