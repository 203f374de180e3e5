"""mcp_gate's public surface: what `__all__` names exists, is the real thing, and costs nothing to
import until it is used."""

from __future__ import annotations

import inspect
import subprocess
import sys

import mcp_gate
from mcp_gate import errors
from mcp_gate.gateway import Gateway
from mcp_gate.runtime import open_gate
from mcp_gate.storage.base import Store
from mcp_gate.storage.memory import MemoryStore


def test_all_names_the_embedding_surface_and_each_resolves_to_its_home() -> None:
    assert {"Gateway", "open_gate", "Store", "MemoryStore", "GateError", "__version__"} <= set(
        mcp_gate.__all__
    )
    assert mcp_gate.Gateway is Gateway
    assert mcp_gate.open_gate is open_gate
    assert mcp_gate.Store is Store
    assert mcp_gate.MemoryStore is MemoryStore
    for name in mcp_gate.__all__:
        assert getattr(mcp_gate, name) is not None


def test_the_whole_error_tree_is_public() -> None:
    tree = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, errors.GateError)
    }
    assert tree <= set(mcp_gate.__all__)
    assert all(getattr(mcp_gate, name) is getattr(errors, name) for name in tree)


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        mcp_gate.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("mcp_gate.NoSuchThing resolved")


def test_importing_the_package_imports_nothing_else() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, mcp_gate; print(sorted(m for m in sys.modules if m.startswith(('mcp', 'anyio'))))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert loaded.stdout.strip() == "['mcp_gate']"
