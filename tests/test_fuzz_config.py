"""Hostile gate.toml, tool manifests and client JSON: each parses or is refused with one
ConfigError line, within its stated size and depth limits (docs/limits.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_gate.config import (
    MAX_CLIENT_CONFIG_BYTES,
    MAX_NESTING,
    MAX_TOML_BYTES,
    load_config,
    read_client_config,
)
from mcp_gate.errors import ConfigError
from mcp_gate.manifests import load_manifest

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)

HOSTILE_JSON = [
    "[" * 100_000 + "]" * 100_000,
    '{"mcpServers": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + "}",
    '{"mcpServers": {"a": {"command": "x", "timeout": 1' + "0" * 5000 + "}}}",
    '{"mcpServers": {"a": {"command": "x", "timeout": NaN}}}',
    '{"mcpServers": {"a": {"command": "x", "timeout": Infinity}}}',
    '{"mcpServers": {"a": {"command": "\\ud800"}}}',
    '{"mcpServers": {"a": {"command": "x"}, "a": {"command": "y"}}}',
    '{"mcpServers": {"a\\nb": {"command": "x"}}}',
    "/* never closed",
    '"just a string"',
]
HOSTILE_TOML = [
    "a = " + "[" * 100_000 + "]" * 100_000,
    "a = " + "{b = " * 2000 + "1" + "}" * 2000,
    "[gate]\nname = 'x'\nn = 1" + "0" * 5000 + "\n",
    '[gate]\nname = "\\ud800"\n',
    "[gate]\nname = 'x'\n[gate]\nname = 'y'\n",
    "[servers.\"a\\nb\"]\ncommand = 'x'\n",
    "x = '" + "y" * 10 + "\n",
]


def _one_line(exc: ConfigError) -> None:
    assert "\n" not in str(exc) and str(exc)


def _load_toml(raw: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-") as scratch:
        path = Path(scratch) / "gate.toml"
        path.write_bytes(raw)
        _load_toml_file(path)


def _load_toml_file(path: Path) -> None:
    try:
        load_config(path, {})
    except ConfigError as exc:
        _one_line(exc)
    try:
        load_manifest(path)
    except ConfigError as exc:
        _one_line(exc)


def _load_json(raw: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-") as scratch:
        path = Path(scratch) / "mcp.json"
        path.write_bytes(raw)
        try:
            read_client_config(path, {})
        except ConfigError as exc:
            _one_line(exc)


@pytest.mark.parametrize("text", HOSTILE_TOML)
def test_hostile_toml_is_refused_in_one_line_by_config_and_manifest_readers(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "gate.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    _one_line(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_manifest(path)
    _one_line(caught.value)


@pytest.mark.parametrize("text", HOSTILE_JSON)
def test_hostile_client_json_is_refused_in_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        read_client_config(path, {})
    _one_line(caught.value)


def test_nesting_at_the_limit_parses_and_one_past_it_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    inner = "[" * (MAX_NESTING - 3) + "]" * (MAX_NESTING - 3)
    path.write_text('{"mcpServers": {"a": {"command": "x", "oauth": ' + inner + "}}}")
    assert "a" in read_client_config(path, {})
    inner = "[" * (MAX_NESTING - 2) + "]" * (MAX_NESTING - 2)
    path.write_text('{"mcpServers": {"a": {"command": "x", "oauth": ' + inner + "}}}")
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_NESTING} levels"):
        read_client_config(path, {})


def test_files_past_their_size_limit_are_refused_before_parsing(tmp_path: Path) -> None:
    toml = tmp_path / "gate.toml"
    toml.write_bytes(b"#" * (MAX_TOML_BYTES + 1))
    with pytest.raises(ConfigError, match=f"larger than the limit of {MAX_TOML_BYTES} bytes"):
        load_config(toml, {})
    with pytest.raises(ConfigError, match="larger than the limit"):
        load_manifest(toml)
    client = tmp_path / "mcp.json"
    client.write_bytes(b" " * (MAX_CLIENT_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match=f"larger than the limit of {MAX_CLIENT_CONFIG_BYTES} bytes"):
        read_client_config(client, {})


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_as_gate_toml_or_manifest_parse_or_are_refused_in_one_line(raw: bytes) -> None:
    _load_toml(raw)


@FUZZ
@given(st.text(alphabet=st.sampled_from("[]{}=\"'.,\n#ab1 \\u"), max_size=200))
def test_toml_shaped_text_parses_or_is_refused_in_one_line(text: str) -> None:
    _load_toml(text.encode())


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_as_client_json_parse_or_are_refused_in_one_line(raw: bytes) -> None:
    _load_json(raw)


@FUZZ
@given(st.dictionaries(st.sampled_from(["mcpServers", "servers", "mcp"]), json_values, max_size=2))
def test_client_json_shapes_parse_or_are_refused_in_one_line(data: dict[str, object]) -> None:
    _load_json(json.dumps(data).encode())


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["command", "args", "env", "url", "type", "timeout", "headers", "cwd", "x"]),
        json_values,
        max_size=5,
    )
)
def test_client_server_entries_parse_or_are_refused_in_one_line(entry: dict[str, object]) -> None:
    _load_json(json.dumps({"mcpServers": {"s": entry}}).encode())


@pytest.mark.parametrize(
    ("name", "text", "command"),
    [
        ("mcp.json", "[" * 100_000, ["import", "{path}"]),
        (
            "mcp.json",
            '{"mcpServers": {"a": {"command": "x", "timeout": 1' + "0" * 5000 + "}}}",
            ["import", "{path}"],
        ),
        ("gate.toml", "a = " + "[" * 100_000, ["audit", "verify", "--config", "{path}"]),
        ("gate.toml", "n = 1" + "0" * 5000, ["audit", "verify", "--config", "{path}"]),
    ],
)
def test_the_cli_says_one_line_and_exits_2_on_a_hostile_file(
    tmp_path: Path, name: str, text: str, command: list[str]
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    argv = [part.format(path=path) for part in command]
    done = subprocess.run(
        [sys.executable, "-m", "mcp_gate", *argv], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("mcp-gate: error: "), done.stderr
    assert "Traceback" not in done.stderr
