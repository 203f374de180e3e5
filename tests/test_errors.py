"""The error tree drawn in errors.py's docstring is the tree its classes form."""

from __future__ import annotations

import re

from mcp_gate import errors


def drawn_tree() -> dict[str, str | None]:
    """Each class named in the docstring's drawing, mapped to the class drawn as its parent."""
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    for line in (errors.__doc__ or "").splitlines():
        found = re.match(r"^ {4}([│ ]*(?:├── |└── )?)([A-Z]\w+)\s", line)
        if found is None:
            continue
        depth = len(found.group(1)) // 4
        del stack[depth:]
        parents[found.group(2)] = stack[-1] if stack else None
        stack.append(found.group(2))
    return parents


def test_the_drawing_shows_every_error_under_its_base() -> None:
    classes = {name: getattr(errors, name) for name in errors.__all__}
    actual = {
        name: (None if cls is errors.GateError else cls.__base__.__name__) for name, cls in classes.items()
    }
    assert drawn_tree() == actual
