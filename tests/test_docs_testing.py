"""The example in docs/testing.md runs, and holds what it says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.anyio

DOC = Path(__file__).resolve().parent.parent / "docs" / "testing.md"


def example_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert len(blocks) == 1, f"{DOC.name} should hold exactly one python example, found {len(blocks)}"
    return str(blocks[0])


async def test_the_testing_example_in_the_docs_runs_and_passes(tmp_path: Path) -> None:
    namespace: dict[str, Any] = {"__name__": "docs_testing_example"}
    exec(compile(example_code(), str(DOC), "exec"), namespace)  # our own docs, run as a test
    tests = {name: fn for name, fn in namespace.items() if name.startswith("test_") and callable(fn)}
    assert tests, "the example defines no test"
    for name, test in tests.items():
        await test(tmp_path / name)
