"""The containerd experiment without containerd: its own two subjects, skipped with the reason
when a tool is missing or overlay2 is not in the run, and the image archive `ctr` imports.
(The quick bench in tests/app/test_bench.py runs it for real where containerd is installed.)"""

from __future__ import annotations

import json
import pathlib
import tarfile

import pytest

from cowstore.app.bench.containerd_peer import docker_archive
from cowstore.app.bench.experiments import Context
from cowstore.app.bench.experiments.containerd_run import COWSTORE, OVERLAYFS, ContainerdRun
from cowstore.app.bench.images import ImageCache, write_image
from cowstore.app.bench.runner import run_experiment
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.scratch import Scratch
from cowstore.app.bench.subjects import NativeSubject


def _ctx(tmp_path: pathlib.Path) -> Context:
    return Context(Scale.QUICK, ImageCache(tmp_path), Scratch(0), log=lambda message: None)


def test_missing_tools_skip_both_snapshotters(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("cowstore.app.bench.containerd_peer._SBIN", "")
    result = run_experiment(ContainerdRun(), [NativeSubject(tmp_path)], _ctx(tmp_path))
    assert set(result.skipped) == {OVERLAYFS, COWSTORE}
    assert "not installed: containerd, ctr, runc" in result.skipped[COWSTORE]
    assert not result.samples and not result.errors and not result.verdicts


def test_without_overlay2_in_the_run_nothing_is_started(tmp_path: pathlib.Path) -> None:
    result = run_experiment(ContainerdRun(), [NativeSubject(tmp_path)], _ctx(tmp_path))
    assert set(result.skipped) == {OVERLAYFS, COWSTORE} and not result.errors
    assert "native" not in result.skipped  # the run's own subjects are not this experiment's


def test_docker_archive_names_the_layer_by_its_digest(tmp_path: pathlib.Path) -> None:
    layer = write_image(tmp_path / "base.tar")
    archive = docker_archive(layer, tmp_path / "image.tar", "docker.io/cowstore-bench/busybox:latest")
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(tar.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
        assert manifest[0]["RepoTags"] == ["docker.io/cowstore-bench/busybox:latest"]
        diff_id = config["rootfs"]["diff_ids"][0].removeprefix("sha256:")
        assert manifest[0]["Layers"] == [f"{diff_id}/layer.tar"]
        names = tar.getnames()
    with tarfile.open(layer) as image:
        assert "bin/true" in image.getnames()
    assert f"{diff_id}/layer.tar" in names and config["os"] == "linux"
