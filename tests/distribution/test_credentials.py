"""Credential files where podman, skopeo and Docker keep them."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import stat

import pytest

from cowstore.distribution import credentials
from cowstore.distribution.credentials import BadAuthFile, Credential
from cowstore.distribution.errors import NotLoggedIn


def _auth(user: str, password: str) -> dict:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_store_writes_the_runtime_auth_file_0600(isolated_home: pathlib.Path) -> None:
    path = credentials.store("127.0.0.1:5000", Credential("u", "p:w"))
    assert path == isolated_home / "run" / "containers" / "auth.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert credentials.lookup("127.0.0.1:5000") == Credential("u", "p:w")
    assert "p:w" not in repr(credentials.lookup("127.0.0.1:5000"))
    credentials.remove("127.0.0.1:5000")
    assert credentials.lookup("127.0.0.1:5000") is None
    with pytest.raises(NotLoggedIn):
        credentials.remove("127.0.0.1:5000")


def test_lookup_order_and_docker_config(isolated_home: pathlib.Path) -> None:
    docker = isolated_home / ".docker" / "config.json"
    docker.parent.mkdir()
    docker.write_text(
        json.dumps({"auths": {"https://index.docker.io/v1/": _auth("hub", "h"), "reg:5000": _auth("docker", "d")}})
    )
    assert credentials.lookup("docker.io") == Credential("hub", "h")
    assert credentials.lookup("reg:5000") == Credential("docker", "d")
    credentials.store("reg:5000", Credential("podman", "p"))
    assert credentials.lookup("reg:5000") == Credential("podman", "p")  # the runtime file comes first


def test_repository_specific_entries_win(isolated_home: pathlib.Path) -> None:
    path = isolated_home / "run" / "containers" / "auth.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"auths": {"reg:5000": _auth("any", "1"), "reg:5000/team": _auth("team", "2")}}))
    assert credentials.lookup("reg:5000", "team/app") == Credential("team", "2")
    assert credentials.lookup("reg:5000", "other/app") == Credential("any", "1")


def test_registry_auth_file_and_authfile_override(
    isolated_home: pathlib.Path, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    chosen = tmp_path / "mine.json"
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(chosen))
    assert credentials.store("reg:1", Credential("a", "b")) == chosen
    flag = tmp_path / "flag.json"
    assert credentials.store("reg:1", Credential("c", "d"), flag) == flag
    assert credentials.lookup("reg:1") == Credential("a", "b")
    assert credentials.lookup("reg:1", authfile=flag) == Credential("c", "d")


def test_broken_files_are_one_clear_error(isolated_home: pathlib.Path) -> None:
    path = isolated_home / "run" / "containers" / "auth.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(BadAuthFile, match="not valid JSON"):
        credentials.lookup("reg:1")
    path.write_text(json.dumps({"auths": {"reg:1": {"auth": "%%%"}}}))
    with pytest.raises(BadAuthFile, match="base64"):
        credentials.lookup("reg:1")
