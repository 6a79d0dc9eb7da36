"""The shape of the source tree: module and class sizes, driver folders, a light CLI.

The import direction itself is checked by import-linter (`make lint`, contracts in
pyproject.toml); these tests check what an import graph cannot show.
"""

from __future__ import annotations

import ast
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from cowstore.drivers import driver_names

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "cowstore"
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 420
TALK_TITLE = "Deep dive into Docker storage drivers"
DRIVER_FOLDERS = {
    "vfs": "vfs",
    "overlay2": "overlay",
    "overlay": "overlay",
    "btrfs": "btrfs",
    "aufs": "aufs",
    "devicemapper": "devicemapper",
}


def _modules() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _python(code: str, path: pathlib.Path = SRC) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(path))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)


def test_no_module_over_600_lines() -> None:
    long = {str(p.relative_to(SRC)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_no_class_over_about_400_lines() -> None:
    large = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    large[f"{path.relative_to(SRC)}:{node.name}"] = lines
    assert large == {}


def test_every_driver_is_one_folder() -> None:
    assert set(DRIVER_FOLDERS) == set(driver_names())
    for folder in set(DRIVER_FOLDERS.values()):
        assert (PACKAGE / "drivers" / folder / "__init__.py").is_file()
    loose = [p.name for p in (PACKAGE / "drivers").glob("*.py")]
    assert sorted(loose) == ["__init__.py", "driver.py", "naive.py", "registry.py"]


@pytest.mark.parametrize("folder", sorted(set(DRIVER_FOLDERS.values())))
def test_deleting_a_driver_folder_removes_that_driver_only(folder: str, tmp_path: pathlib.Path) -> None:
    copy = tmp_path / "src"
    shutil.copytree(SRC / "cowstore", copy / "cowstore", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.rmtree(copy / "cowstore" / "drivers" / folder)
    gone = sorted(name for name, f in DRIVER_FOLDERS.items() if f == folder)
    code = f"""
import cowstore.cli, cowstore.store
from cowstore.drivers import driver_class, driver_names
from cowstore.errors import NotSupported
for name in driver_names():
    try:
        driver_class(name)
    except NotSupported:
        assert name in {gone!r}, name
    else:
        assert name not in {gone!r}, name
"""
    done = _python(code, copy)
    assert done.returncode == 0, done.stderr


def test_cli_import_loads_neither_the_bench_nor_rich() -> None:
    done = _python(
        "import sys, cowstore.cli\nprint(sorted(m for m in sys.modules if m.startswith(('cowstore.app', 'rich'))))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_no_comment_points_outside_the_repository() -> None:
    """No issue numbers; the talk only where the module cites it by its title."""
    issue = re.compile(r"\bthe issue\b|\bissue #?\d")
    found = []
    for path in _modules():
        text = path.read_text()
        cited = TALK_TITLE in text
        for number, line in enumerate(text.splitlines(), 1):
            lowered = line.lower()
            if issue.search(lowered) or ("the talk" in lowered and not cited):
                found.append(f"{path.relative_to(SRC)}:{number}")
    assert found == []
