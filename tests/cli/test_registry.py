"""`cowstore login/logout/pull/push` through click's runner, against the test registries."""

from __future__ import annotations

import json
import pathlib

import pytest
from click.testing import CliRunner, Result

from cowstore.app.demo import build_image_archive
from cowstore.cli import main
from cowstore.store import Store
from tests.cli.test_cli_commands import fails, ok
from tests.distribution.conftest import PASSWORD, USER
from tests.support.registry import CertAuthority, RegistryServer, free_port


@pytest.fixture
def cli(tmp_path: pathlib.Path):
    def invoke(*args: str, root: str = "a", input: str | bytes | None = None) -> Result:
        return CliRunner().invoke(
            main, ["--root", str(tmp_path / root), "--driver", "vfs", "--no-sync", *args], input=input
        )

    try:
        yield invoke
    finally:
        for name in ("a", "b"):
            if (tmp_path / name / "cowstore.db").exists():
                Store(tmp_path / name, "vfs").shutdown()


@pytest.fixture
def loaded(cli, tmp_path: pathlib.Path) -> None:
    archive = tmp_path / "demo.tar"
    archive.write_bytes(build_image_archive())
    ok(cli("load", "-i", str(archive)))


def test_push_and_pull_print_docker_style_lines(
    cli, loaded: None, plain_registry: RegistryServer, tmp_path: pathlib.Path
) -> None:
    ref = f"{plain_registry.host}/cli/demo:1"
    out = ok(cli("push", "busybox-demo:latest", ref))
    assert out.startswith(f"The push refers to repository [{plain_registry.host}/cli/demo]\n")
    assert ": Pushed\n" in out
    digest = out.strip().splitlines()[-1].split("digest: ")[1].split()[0]
    assert ok(cli("push", "-q", "busybox-demo:latest", ref)) == f"{digest}\n"
    out = ok(cli("pull", ref, root="b"))
    assert "1: Pulling from" in out and ": Pull complete\n" in out and f"Digest: {digest}\n" in out
    assert out.endswith(f"{ref}\n")
    assert ok(cli("pull", "-q", f"{plain_registry.host}/cli/demo@{digest}", root="b")) == (
        f"{plain_registry.host}/cli/demo@{digest}\n"
    )
    inspect = json.loads(ok(cli("image", "inspect", f"{plain_registry.host}/cli/demo@{digest}", root="b")))
    assert inspect[0]["RepoTags"] == [ref]
    assert inspect[0]["RepoDigests"] == [f"{plain_registry.host}/cli/demo@{digest}"]
    kept = tmp_path / "b" / "distribution" / "blobs" / "sha256"
    assert len(list(kept.iterdir())) == 2
    assert f"Deleted: {inspect[0]['Id']}" in ok(cli("rmi", ref, root="b"))
    assert list(kept.iterdir()) == []  # rmi frees the registry blobs kept for its layers


def test_one_line_errors(cli, loaded: None, plain_registry: RegistryServer) -> None:
    fails(cli("pull", f"{plain_registry.host}/cli/nothing:here"), "manifest unknown")
    fails(cli("pull", f"127.0.0.1:{free_port()}/x/y:1"), "unreachable")
    fails(cli("pull", "127.0.0.1:5000/UPPER/case"), "invalid reference format")
    fails(cli("push", "no-such-image:1", f"{plain_registry.host}/x/y:1"), "No such image")
    fails(cli("pull", "--platform", "linux", f"{plain_registry.host}/x/y:1"), "invalid platform")


def test_login_logout(
    cli, loaded: None, secure_registry: RegistryServer, ca: CertAuthority, isolated_home: pathlib.Path
) -> None:
    host = secure_registry.host
    certs = ["--cert-dir", str(ca.directory)]
    fails(cli("push", *certs, "busybox-demo:latest", f"{host}/cli/private:1"), "unauthorized")
    fails(cli("login", *certs, "-u", USER, "--password-stdin", host, input="bad\n"), "unauthorized")
    fails(cli("pull", f"{host}/cli/private:1"), "CA files tried")
    authfile = isolated_home / "elsewhere.json"
    out = ok(
        cli("login", *certs, "--authfile", str(authfile), "-u", USER, "--password-stdin", host, input=f"{PASSWORD}\n")
    )
    assert out == "Login Succeeded!\n" and host in json.loads(authfile.read_text())["auths"]
    ok(cli("push", *certs, "--authfile", str(authfile), "busybox-demo:latest", f"{host}/cli/private:1"))
    assert ok(cli("logout", "--authfile", str(authfile), host)) == f"Removed login credentials for {host}\n"
    fails(cli("logout", "--authfile", str(authfile), host), "not logged into")
