"""`cowstore system df|prune|reset` through the CLI."""

from __future__ import annotations

import json
import pathlib

from click.testing import CliRunner, Result

from cowstore.app.demo import build_image_archive
from cowstore.cli import main
from cowstore.store import Store


def run(root: pathlib.Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["--root", str(root), "--driver", "overlay2", *args], input=input)


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def test_system_df_prune_and_reset(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "root"
    archive = tmp_path / "img.tar"
    archive.write_bytes(build_image_archive())
    try:
        ok(run(root, "load", "-i", str(archive)))
        ok(run(root, "create", "--name", "c1", "busybox-demo"))
        lines = ok(run(root, "system", "df")).splitlines()
        assert lines[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
        assert [line.split()[0] for line in lines[1:]] == ["Images", "Containers", "Layers", "Driver", "Total"]
        verbose = ok(run(root, "system", "df", "-v"))
        assert "Images space usage:" in verbose and "busybox-demo:latest" in verbose and "c1" in verbose
        usage = json.loads(ok(run(root, "system", "df", "--format", "json")))
        assert usage["Total"] == sum(row["Size"] for row in usage["Summary"])
        assert [c["Names"] for c in usage["Containers"]] == ["c1"]

        assert run(root, "system", "prune", input="n\n").exit_code == 1  # declined: nothing removed
        assert json.loads(ok(run(root, "container", "ls", "--format", "json")))[0]["Names"] == "c1"
        out = ok(run(root, "system", "prune", "-a", "-f"))
        assert out.startswith("Deleted Containers:\n") and "Untagged: busybox-demo:latest" in out
        assert out.splitlines()[-1].startswith("Total reclaimed space: ")
        assert json.loads(ok(run(root, "system", "df", "--format", "json")))["Images"] == []

        assert run(root, "system", "reset", input="n\n").exit_code == 1
        assert root.exists()
        assert ok(run(root, "system", "reset", "--force")).endswith(f"removed {root}\n")
        assert not root.exists()
        result = run(tmp_path, "system", "reset", "-f")
        assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "not a cowstore root" in result.stderr
    finally:
        if root.exists():
            Store(root, "overlay2").shutdown()
