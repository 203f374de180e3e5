"""The package's layers stay put: only the storage backends reach a database driver, and only
`datadir.py` spells the data directory's file names."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import mcp_gate

PACKAGE = Path(mcp_gate.__file__).parent
DRIVERS = {"sqlite3", "aiosqlite"}
NAMES = {"gate.db", "gate.lock", "args.key", "decisions.key", "elicitation.key"}


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE.parent).as_posix(), ast.parse(path.read_text(encoding="utf-8"))


def imported(tree: ast.Module) -> set[str]:
    """The top-level names of every module `tree` imports, at any depth (lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_storage_package_imports_a_database_driver() -> None:
    offenders = {
        name: sorted(imported(tree) & DRIVERS)
        for name, tree in modules()
        if not name.startswith("mcp_gate/storage/") and imported(tree) & DRIVERS
    }
    assert offenders == {}


def test_the_storage_package_is_where_sqlite_is_imported() -> None:
    # The check above is only worth something if it can see the imports it looks for.
    users = {name for name, tree in modules() if "sqlite3" in imported(tree)}
    assert "mcp_gate/storage/sqlite/__init__.py" in users


def test_only_datadir_spells_the_data_directory_file_names() -> None:
    spelled = {
        name
        for name, tree in modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in NAMES
    }
    assert spelled == {"mcp_gate/datadir.py"}


OPENERS = {
    "open_store",
    "open_reader",
    "open_database",
    "open_database_reader",
    "replica_lock",
    "notary_for",
    "DataDirLock",
}


def called(tree: ast.Module) -> set[str]:
    """The names of the functions and classes `tree` calls, plain (`f()`) or through a module (`m.f()`)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name):
                names.add(node.func.id)
            elif isinstance(node.func, ast.Attribute):
                names.add(node.func.attr)
    return names


def test_only_the_runtime_opens_the_store_the_notary_and_the_data_directory_lock() -> None:
    # One composition root: every writer gets the gate's notary by the same rule, and no command
    # opens the file its own way. The storage package opens its own backends.
    openers = {
        name: sorted(called(tree) & OPENERS)
        for name, tree in modules()
        if not name.startswith("mcp_gate/storage/") and called(tree) & OPENERS
    }
    assert openers == {"mcp_gate/runtime.py": sorted(OPENERS)}
