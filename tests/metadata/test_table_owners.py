"""Each table of the store database has one owner module, and only it writes SQL for the table.

The scan reads every string literal under src/cowstore: one that holds an SQL statement
may stand only in the schema module or in the owner of every table it names. Calls of
`execute` outside those modules fail too, so SQL kept in a variable is caught as well.
"""

from __future__ import annotations

import ast
import pathlib
import re
from collections.abc import Iterator

import cowstore
from cowstore.metadata.db import MIGRATIONS

SRC = pathlib.Path(cowstore.__file__).parent
SCHEMA = "metadata/db.py"  # the migrations create every table; nothing else may stand there
OWNERS = {
    "layers": "layers/records.py",
    "mounts": "layers/records.py",
    "leases": "layers/records.py",
    "snapshots": "layers/snapshotrecords.py",
    "settings": "metadata/settings.py",
    "images": "images/store.py",
    "tags": "images/store.py",
    "containers": "containers/store.py",
    "repo_digests": "images/store.py",
    "blobs": "distribution/records.py",
    "blob_sources": "distribution/records.py",
    "manifests": "distribution/records.py",
}
_STATEMENT = re.compile(
    r"\b(SELECT\b.*\bFROM|INSERT\b.*\bINTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|REPLACE\s+INTO"
    r"|CREATE\s+(TABLE|INDEX)|DROP\s+(TABLE|INDEX)|ALTER\s+TABLE|PRAGMA)\b",
    re.DOTALL,
)
_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN|TABLE)\s+(\w+)")
_EXECUTE = {"execute", "executemany", "executescript"}


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        yield path.relative_to(SRC).as_posix(), ast.parse(path.read_text(), str(path))


def _sql(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, text) of every string literal that holds an SQL statement; f-strings by their literal parts."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(str(v.value) for v in node.values if isinstance(v, ast.Constant))
        else:
            continue
        if _STATEMENT.search(text):
            yield node.lineno, text


def _executes(tree: ast.Module) -> Iterator[int]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _EXECUTE:
            yield node.lineno


def test_every_table_has_one_owner() -> None:
    created = set(re.findall(r"CREATE TABLE (\w+)", "".join(MIGRATIONS)))
    assert created == set(OWNERS), "a table was added or dropped: name its owner module in OWNERS"


def test_sql_stays_with_the_owners_of_its_tables() -> None:
    owned = set(OWNERS.values())
    misplaced: list[str] = []
    named: dict[str, set[str]] = {}
    for module, tree in _modules():
        if module == SCHEMA:
            continue
        for line in _executes(tree):
            if module not in owned:
                misplaced.append(f"{module}:{line}: execute() outside the table owners")
        for line, text in _sql(tree):
            tables = {t for t in _TABLE.findall(text) if t in OWNERS}
            named.setdefault(module, set()).update(tables)
            if module not in owned:
                misplaced.append(f"{module}:{line}: SQL outside the table owners: {text!r}")
            for table in sorted(tables):
                if OWNERS[table] != module:
                    misplaced.append(f"{module}:{line}: SQL on {table}, which {OWNERS[table]} owns: {text!r}")
    assert misplaced == []
    # The scan must see each owner's own SQL, or it would pass by seeing nothing.
    for table, module in OWNERS.items():
        assert table in named.get(module, set()), f"no SQL on {table} found in its owner {module}"
