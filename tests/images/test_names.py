"""Names are matched as whole strings: a trailing newline makes a look-alike, never a valid name.

`re.match` with a pattern ending in `$` accepts "name\\n"; such names would split the
tables (`web` and `web\\n` are two containers, `x:1` and `x:1\\n` two tags).
"""

from __future__ import annotations

import json
import pathlib

import pytest

from cowstore.digest import check_digest
from cowstore.drivers.common.ids import check_id
from cowstore.errors import InvalidArgument
from cowstore.images import reference

from ..support.tars import layer_tar
from .imagearchives import config_for, docker_archive
from .test_hostile_images import cli, fails  # noqa: F401  (the fixture)


@pytest.mark.parametrize("ref", ["x:1\n", "x\n:1", "x:1\n\n", "abc\n", "x:caf\u00e9", "x:\u0663"])
def test_references_with_a_newline_are_invalid(ref: str) -> None:
    with pytest.raises(InvalidArgument):
        reference.normalize(ref)
    assert not reference.is_id_prefix("abc\n")


def test_a_repository_named_like_an_image_id_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="64-byte hexadecimal"):
        reference.normalize("a" * 64)
    with pytest.raises(InvalidArgument, match="64-byte hexadecimal"):
        reference.normalize("a" * 64 + ":1")
    assert reference.normalize("a" * 63) == "a" * 63 + ":latest"


def test_digests_and_layer_ids_with_a_newline_are_invalid() -> None:
    with pytest.raises(InvalidArgument):
        check_digest("sha256:" + "a" * 64 + "\n")
    with pytest.raises(InvalidArgument):
        check_id("layer\n")


def test_cli_refuses_newline_names(cli, tmp_path: pathlib.Path) -> None:  # noqa: F811
    fails(cli("tag", "base:1", "copy:1\n"), "invalid")
    fails(cli("create", "--name", "web\n", "base:1"), "name")
    layer = layer_tar({"f": b"n"})
    archive = tmp_path / "newline.tar"
    archive.write_bytes(docker_archive([([layer], ["base:1\n"])], config_override=config_for([layer])))
    fails(cli("load", "-i", str(archive)), "invalid tag")
    assert json.loads(cli("image", "ls", "--format", "json").stdout)[0]["Tag"] == "1"
