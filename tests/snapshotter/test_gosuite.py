"""containerd's own snapshotter test suite (snapshots/testsuite of containerd 1.6.20) on every driver.

gosuite/suite_test.go hands the suite a factory that starts `cowstore snapshotter serve`
on each test case's own root and connects to it through containerd's proxy client
(snapshots/proxy), as containerd itself connects to a proxy plugin. It is built once
per session with Debian's Go in GOPATH mode from Debian's containerd source, offline;
the build cache is Go's own (GOCACHE), so only a first build compiles containerd.

Every case runs on every driver: about two minutes on a quiet machine, most of it the
128-layer case on the FUSE-backed drivers (aufs, devicemapper).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from ..support.drivers import HOST_OPTIONS
from ..support.snapshotter import cli_env

GOCODE = pathlib.Path("/usr/share/gocode/src")
SUITE = GOCODE / "github.com/containerd/containerd/snapshots/testsuite"
HARNESS = pathlib.Path(__file__).with_name("gosuite") / "suite_test.go"
DRIVERS = ["overlay2", "overlay", "vfs", "btrfs", "aufs", "devicemapper"]
ALL_CASES = [
    "Basic",
    "StatActive",
    "StatComitted",
    "TransitivityTest",
    "PreareViewFailingtest",
    "Update",
    "Remove",
    "Walk",
    "LayerFileupdate",
    "RemoveDirectoryInLowerLayer",
    "Chown",
    "DirectoryPermissionOnCommit",
    "RemoveIntermediateSnapshot",
    "DeletedFilesInChildSnapshot",
    "MoveFileFromLowerLayer",
    "Rename",
    "ViewReadonly",
    "StatInWalk",
    "CloseTwice",
    "RootPermission",
    "128LayersMount",
]
# containerd 1.6's suite skips Rename itself, on every snapshotter (testsuite/issues.go).
SUITE_SKIPS = {"Rename"}


@pytest.fixture(scope="session")
def suite_binary(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    go = shutil.which("go")
    if go is None or not SUITE.is_dir():
        pytest.skip("needs golang-go and golang-github-containerd-containerd-dev")
    if os.geteuid() != 0:
        pytest.skip("the suite mounts: it needs root")
    build = tmp_path_factory.mktemp("gosuite")
    package = build / "gopath" / "src" / "cowstore.test" / "gosuite"
    package.mkdir(parents=True)
    shutil.copy(HARNESS, package)
    # containerd imports gotest.tools/v3; Debian installs that module at gotest.tools.
    (build / "gopath" / "src" / "gotest.tools").mkdir()
    (build / "gopath" / "src" / "gotest.tools" / "v3").symlink_to(GOCODE / "gotest.tools")
    binary = build / "suite.test"
    env = dict(os.environ, GOPATH=f"{build / 'gopath'}:{GOCODE.parent}", GO111MODULE="off", GOFLAGS="", GOPROXY="off")
    done = subprocess.run(
        [go, "test", "-c", "-o", str(binary), "."], cwd=package, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return binary


@pytest.mark.parametrize("driver", DRIVERS)
def test_containerd_snapshotter_suite(suite_binary: pathlib.Path, driver: str) -> None:
    cases = ALL_CASES
    options = " ".join(f"{k}={v}" for k, v in HOST_OPTIONS.get(driver, {}).items())
    env = cli_env({"COWSTORE_PYTHON": sys.executable, "COWSTORE_DRIVER": driver, "COWSTORE_STORAGE_OPTS": options})
    pattern = f"^TestSnapshotterSuite$/^({'|'.join(cases)})$"
    done = subprocess.run(
        [str(suite_binary), "-test.v", "-test.parallel", "2", "-test.timeout", "40m", "-test.run", pattern],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    output = done.stdout + done.stderr
    skipped = "Initialize snapshotter" in output and driver in ("btrfs", "aufs", "devicemapper")
    if done.returncode != 0 and skipped and "not supported" in output:
        pytest.skip(f"{driver} cannot run on this host")
    # What failed and why: the suite's own messages, without its long list of unmounts.
    messages = [line for line in output.splitlines() if ".go:" in line and "helpers_unix.go" not in line]
    assert done.returncode == 0, "\n".join([*messages[-60:], output[-2000:]])
    assert results(output, "PASS") | results(output, "SKIP") == set(cases)
    assert results(output, "SKIP") <= SUITE_SKIPS


def results(output: str, outcome: str) -> set[str]:
    """The case names `go test -v` reports with `outcome` (PASS, SKIP, FAIL)."""
    marker = f"--- {outcome}: TestSnapshotterSuite/"
    return {line.split("/", 1)[1].split()[0] for line in output.splitlines() if marker in line}
