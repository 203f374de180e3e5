from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest

from mcp_gate import config as config_module
from mcp_gate.config import (
    GateConfig,
    HttpSettings,
    Requester,
    ServerSpec,
    load_config,
    read_client_config,
    resolve_config_path,
    servers_to_toml,
)
from mcp_gate.config import gate_toml as config_gate_toml
from mcp_gate.config import model as config_model
from mcp_gate.errors import ConfigError
from mcp_gate.policy import DEFAULT_REQUIREMENTS, Approvals, Block, Confirm, Run

TOKEN = "ab" * 32
ENV = {"HOME": "/home/alice", "NOTES_TOKEN": "s3cret", "LANG": "C.UTF-8", "EMPTY": ""}


def write(directory: Path, text: str, name: str = "gate.toml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load(directory: Path, text: str, environ: dict[str, str] | None = None) -> GateConfig:
    return load_config(write(directory, text), ENV if environ is None else environ)


def config_error(directory: Path, text: str, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(directory, text, environ)
    assert "\n" not in str(caught.value)
    return caught.value


def client_error(directory: Path, document: str, environ: dict[str, str] | None = None) -> ConfigError:
    path = write(directory, document, "mcp.json")
    with pytest.raises(ConfigError) as caught:
        read_client_config(path, ENV if environ is None else environ)
    assert caught.value.file == str(path)
    assert "\n" not in str(caught.value)
    return caught.value


def client(directory: Path, document: object, environ: dict[str, str] | None = None) -> dict[str, ServerSpec]:
    text = document if isinstance(document, str) else json.dumps(document)
    return read_client_config(write(directory, text, "mcp.json"), ENV if environ is None else environ)


def test_every_value_type_and_entry_point_is_exported_and_every_export_exists() -> None:
    # The values (model) and the gate.toml entry points are the package's API; files and servers
    # also hold helpers that only the package's own modules (and manifests) use.
    defined = {
        name
        for module in (config_module, config_model, config_gate_toml)
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and getattr(value, "__module__", None) == module.__name__
    }
    assert defined <= set(config_module.__all__)
    assert all(hasattr(config_module, name) for name in config_module.__all__)


# --- gate.toml ----------------------------------------------------------------------------------------


def test_an_empty_config_gets_the_documented_defaults_relative_to_its_directory(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert config.path == tmp_path / "gate.toml"
    assert config.name == "mcp-gate"
    assert config.data_dir == tmp_path / ".mcp-gate"
    assert (config.manifests_dir, config.manifests_required) == (tmp_path / "tool_manifests", False)
    assert config.requester == Requester(agent="local-agent", owner="unknown")
    assert dict(config.agents) == {} and dict(config.servers) == {}
    assert config.requirements == DEFAULT_REQUIREMENTS


def test_a_full_config_is_read_with_paths_resolved_against_the_config_directory(tmp_path: Path) -> None:
    config = load(
        tmp_path / "etc",
        f"""
[gate]
name = "acme-prod"
data_dir = "../var/gate"
manifests = "manifests"

[requester]
agent = "claude-desktop@alice-laptop"
owner = "alice@example.com"

[agents.ci-bot]
token_sha256 = "{TOKEN}"
owner = "carol@example.com"

[servers.notes]
command = "python"
args = ["examples/notes_server.py", "--token=${{NOTES_TOKEN}}"]
env = {{ NOTES_DIR = "/tmp/notes", LANG = "override" }}
cwd = "work"
timeout = 30
protocol = "auto"
inherit_env = ["LANG", "HOME", "NOT_SET_ANYWHERE"]

[servers.remote]
url = "https://notes.example.com/mcp"
headers = {{ Authorization = "Bearer ${{NOTES_TOKEN}}" }}
disabled = true
""",
    )
    base = tmp_path / "etc"
    assert config.name == "acme-prod"
    assert config.data_dir == base / "../var/gate"
    assert (config.manifests_dir, config.manifests_required) == (base / "manifests", True)
    assert config.requester == Requester("claude-desktop@alice-laptop", "alice@example.com")
    assert (
        config.agents["ci-bot"].token_sha256 == TOKEN and config.agents["ci-bot"].owner == "carol@example.com"
    )
    notes, remote = config.servers["notes"], config.servers["remote"]
    assert notes == ServerSpec(
        name="notes",
        command="python",
        args=("examples/notes_server.py", "--token=s3cret"),
        env={"LANG": "override", "HOME": "/home/alice", "NOTES_DIR": "/tmp/notes"},
        cwd=base / "work",
        url=None,
        headers={},
        timeout=30.0,
        protocol="auto",
        disabled=False,
        origin=str(base / "gate.toml"),
    )
    assert notes.transport == "stdio"
    assert remote.transport == "http" and remote.cwd is None and remote.disabled
    assert dict(remote.headers) == {"Authorization": "Bearer s3cret"}
    assert (remote.timeout, remote.protocol) == (120.0, "legacy")


def test_a_stdio_server_runs_in_the_config_directory_by_default(tmp_path: Path) -> None:
    config = load(tmp_path, '[servers.notes]\ncommand = "python"\n')
    assert config.servers["notes"].cwd == tmp_path


def test_tiers_can_be_given_other_requirements(tmp_path: Path) -> None:
    config = load(
        tmp_path, '[tiers]\nlow = "confirm"\nmedium = "run"\nhigh = { approvals = 3 }\ncritical = "block"\n'
    )
    assert dict(config.requirements) == {
        "low": Confirm(),
        "medium": Run(),
        "high": Approvals(3),
        "critical": Block(),
        "blocked": Block(),
    }


def test_the_config_hash_is_stable_and_changes_with_any_setting(tmp_path: Path) -> None:
    text = '[servers.notes]\ncommand = "python"\nenv = { T = "${NOTES_TOKEN}" }\n'
    first = load(tmp_path, text).config_sha256
    assert load(tmp_path, text).config_sha256 == first and len(first) == 64
    assert load(tmp_path, text, ENV | {"NOTES_TOKEN": "other"}).config_sha256 != first
    assert load(tmp_path, text + 'args = ["-v"]\n').config_sha256 != first
    assert load(tmp_path, text + "[tiers]\nhigh = { approvals = 2 }\n").config_sha256 != first


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('colour = "red"\n', "colour", "unknown key"),
        ('[gate]\nname = "x"\nport = 1\n', "gate.port", "unknown key"),
        ('[gate]\nname = ""\n', "gate.name", "must not be empty"),
        ("servers_from = 'a.json'\n", "servers_from", "expected a list, got a string"),
        (
            '[servers.notes]\ncommand = "python"\nargs = "x.py"\n',
            "servers.notes.args",
            "expected a list, got a string",
        ),
        (
            '[servers.notes]\ncommand = "python"\nargs = ["x.py", 5]\n',
            "servers.notes.args[2]",
            "expected a string",
        ),
        (
            '[servers.notes]\ncommand = "python"\nenv = { A = 1 }\n',
            "servers.notes.env.A",
            "expected a string",
        ),
        ('[servers.notes]\ncommand = "python"\nport = 1\n', "servers.notes.port", "unknown key"),
        ('[servers.notes]\ncommand = "python"\ntimeout = 0\n', "servers.notes.timeout", "greater than 0"),
        (
            '[servers.notes]\ncommand = "python"\ntimeout = "1m"\n',
            "servers.notes.timeout",
            "expected a number",
        ),
        (
            '[servers.notes]\ncommand = "python"\nprotocol = "2025"\n',
            "servers.notes.protocol",
            "unknown protocol '2025'",
        ),
        (
            '[servers.notes]\ncommand = "python"\ndisabled = "no"\n',
            "servers.notes.disabled",
            "expected true or false",
        ),
        ("[servers.notes]\n", "servers.notes", "needs command (stdio) or url"),
        ('[servers.notes]\ncommand = "p"\nurl = "http://h/mcp"\n', "servers.notes", "not both"),
        ('[servers.notes]\ncommand = "  "\n', "servers.notes.command", "must not be empty"),
        ('[servers.notes]\nurl = "ftp://h/mcp"\n', "servers.notes.url", "not an http:// or https:// URL"),
        (
            '[servers.notes]\nurl = "notes.example.com/mcp"\n',
            "servers.notes.url",
            "not an http:// or https://",
        ),
        (
            '[servers.notes]\nurl = "http://h/mcp"\nargs = ["x"]\n',
            "servers.notes.args",
            "only applies to stdio",
        ),
        (
            '[servers.notes]\nurl = "http://h/mcp"\ninherit_env = ["A"]\n',
            "servers.notes.inherit_env",
            "stdio",
        ),
        (
            '[servers.notes]\ncommand = "p"\nheaders = { A = "b" }\n',
            "servers.notes.headers",
            "only applies to HTTP",
        ),
        (
            '[servers.notes]\ncommand = "p"\ninherit_env = ["A-B"]\n',
            "servers.notes.inherit_env[1]",
            "not an environment",
        ),
        ('[servers.a__b]\ncommand = "p"\n', "servers.a__b", "must not contain '__'"),
        # "n_" + "__" + "x" reads as server "n", tool "_x": refused, so every name splits one way.
        ('[servers.n_]\ncommand = "p"\n', "servers.n_", "must not end in '_'"),
        ('[servers."a b"]\ncommand = "p"\n', "servers.a b", "server name 'a b' must be 1-64 letters"),
        (f'[servers.{"x" * 65}]\ncommand = "p"\n', f"servers.{'x' * 65}", "1-64"),
        ('[servers.notes]\ncommand = "p"\nargs = ["${NOPE}"]\n', "servers.notes.args[1]", "NOPE is not set"),
        (
            '[servers.notes]\nurl = "http://h"\nheaders = { A = "${env:NOPE}" }\n',
            "servers.notes.headers.A",
            "NOPE",
        ),
        ('[agents.ci]\ntoken_sha256 = "abc"\nowner = "c"\n', "agents.ci.token_sha256", "64 lowercase hex"),
        (
            f'[agents.ci]\ntoken_sha256 = "{TOKEN.upper()}"\nowner = "c"\n',
            "agents.ci.token_sha256",
            "lowercase",
        ),
        (f'[agents.ci]\ntoken_sha256 = "{TOKEN}"\n', "agents.ci.owner", "required key is missing"),
        (f'[agents."c i"]\ntoken_sha256 = "{TOKEN}"\nowner = "c"\n', "agents.c i", "agent name"),
        (
            f'[agents.a]\ntoken_sha256 = "{TOKEN}"\nowner = "c"\n'
            f'[agents.b]\ntoken_sha256 = "{TOKEN}"\nowner = "d"\n',
            "agents.b.token_sha256",
            "already given to agent 'a'",
        ),
        ('[requester]\nagent = "a"\nname = "b"\n', "requester.name", "unknown key"),
        ('[tiers]\nblocked = "run"\n', "tiers.blocked", "cannot be configured"),
        ('[tiers]\nsevere = "run"\n', "tiers.severe", "unknown tier"),
        ('[tiers]\nhigh = "approve"\n', "tiers.high", 'expected "run", "confirm", "block" or'),
        ("[tiers]\nhigh = { approvals = 0 }\n", "tiers.high.approvals", "from 1 to 10"),
        ("[tiers]\nhigh = { approvals = 11 }\n", "tiers.high.approvals", "from 1 to 10"),
        ("[tiers]\nhigh = { approvals = true }\n", "tiers.high.approvals", "from 1 to 10"),
        ("[tiers]\nhigh = { approvals = 1, by = 'x' }\n", "tiers.high.by", "unknown key"),
        ("[tiers]\nhigh = {}\n", "tiers.high.approvals", "required key is missing"),
        ("servers_from = ['missing.json']\n", "servers_from[1]", "no such file"),
        ("[http]\nheader_timeout = 0\n", "http.header_timeout", "greater than 0"),
        ("[http]\nmax_body_bytes = 10\n", "http.max_body_bytes", "1024"),
        ("[http]\nmax_connections = '9'\n", "http.max_connections", ""),
        ("[http]\nallowed_hosts = 'x'\n", "http.allowed_hosts", ""),
        ("[http]\nread_timeout = 5\n", "http.read_timeout", "unknown key"),
        ("[requester]\nhold_seconds = 0\n", "requester.hold_seconds", "greater than 0"),
        ("[requester]\nhold_seconds = -5\n", "requester.hold_seconds", "greater than 0"),
        (
            f"[agents.ci]\ntoken_sha256 = '{'a' * 64}'\nowner = 'c'\nhold_seconds = 4000\n",
            "agents.ci.hold_seconds",
            "less than or equal to 3600",
        ),
        ("[pins]\nnew_tools = 'allow'\n", "pins.new_tools", "quarantine"),
        ("[pins]\nrecheck_timeout = 0\n", "pins.recheck_timeout", "greater than 0"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_file_the_key_and_the_problem(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    error = config_error(tmp_path, text)
    assert (error.file, error.key) == (str(tmp_path / "gate.toml"), key)
    assert problem in error.problem
    assert str(error).startswith(f"{tmp_path / 'gate.toml'}: {key}: ")


def test_http_limits_have_defaults_and_can_be_set(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), ENV).http == HttpSettings()
    text = '[http]\nheader_timeout = 2\nmax_connections = 8\nallowed_hosts = ["gate.internal"]\n'
    http = load_config(write(tmp_path, text), ENV).http
    assert (http.header_timeout, http.max_connections, http.allowed_hosts) == (2.0, 8, ("gate.internal",))
    assert (
        http.body_timeout == 30 and http.max_body_bytes == 1024 * 1024 and http.admin_max_body_bytes == 65536
    )


def test_a_missing_config_says_how_to_name_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "gate.toml", ENV)
    assert (
        str(caught.value) == f"{tmp_path / 'gate.toml'}: no such file; pass --config or set MCP_GATE_CONFIG"
    )


def test_a_config_path_that_is_a_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory, not a file"):
        load_config(tmp_path, ENV)


def test_a_config_toml_syntax_error_quotes_the_parser_with_its_position(tmp_path: Path) -> None:
    error = config_error(tmp_path, "[gate]\nname = \n")
    assert error.key is None
    assert error.problem == "invalid TOML: Invalid value (at line 2, column 8)"


def test_a_config_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "gate.toml"
    path.write_bytes(b'[gate]\nname = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path, ENV)


# --- servers_from ------------------------------------------------------------------------------------


def test_servers_from_merges_client_configs_relative_to_the_config_file(tmp_path: Path) -> None:
    write(
        tmp_path / "clients",
        json.dumps({"mcpServers": {"fs": {"command": "npx", "args": ["-y", "fs"]}}}),
        "c.json",
    )
    config = load(
        tmp_path / "gate",
        'servers_from = ["../clients/c.json"]\n[servers.notes]\ncommand = "python"\n',
    )
    assert list(config.servers) == ["notes", "fs"]
    assert config.servers["fs"].args == ("-y", "fs")
    assert config.servers["fs"].origin == str(tmp_path / "gate" / "../clients/c.json")


def test_a_server_named_in_both_the_config_and_a_client_config_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, json.dumps({"mcpServers": {"notes": {"command": "npx"}}}), "c.json")
    error = config_error(tmp_path, 'servers_from = ["c.json"]\n[servers.notes]\ncommand = "python"\n')
    assert error.key == "servers_from[1]"
    assert "server 'notes'" in error.problem and "only once" in error.problem


def test_a_server_named_in_two_client_configs_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, json.dumps({"mcpServers": {"notes": {"command": "a"}}}), "a.json")
    write(tmp_path, json.dumps({"servers": {"notes": {"command": "b"}}}), "b.json")
    error = config_error(tmp_path, 'servers_from = ["a.json", "b.json"]\n')
    assert error.key == "servers_from[2]" and "a.json" in error.problem


def test_an_error_inside_a_client_config_names_that_file(tmp_path: Path) -> None:
    bad = write(tmp_path, json.dumps({"mcpServers": {"notes": {"command": "a", "port": 1}}}), "c.json")
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, 'servers_from = ["c.json"]\n')
    assert (caught.value.file, caught.value.key) == (str(bad), "mcpServers.notes.port")


# --- client configs ---------------------------------------------------------------------------------


def test_a_claude_desktop_config_is_read_as_stdio_servers(tmp_path: Path) -> None:
    servers = client(
        tmp_path,
        {
            "globalShortcut": "Ctrl+Space",
            "mcpServers": {"filesystem": {"command": "npx", "args": ["-y", "fs", "/d"], "env": {"K": "v"}}},
        },
    )
    fs = servers["filesystem"]
    assert (fs.command, fs.args, dict(fs.env), fs.transport) == (
        "npx",
        ("-y", "fs", "/d"),
        {"K": "v"},
        "stdio",
    )
    # Clients start servers without a set folder; an imported entry does not invent one.
    assert (fs.cwd, fs.timeout, fs.protocol, fs.disabled) == (None, 120.0, "legacy", False)
    assert fs.origin == str(tmp_path / "mcp.json")


def test_a_vscode_config_with_comments_and_trailing_commas_is_read(tmp_path: Path) -> None:
    servers = client(
        tmp_path,
        """{
  // prompts the gate does not use
  "inputs": [{"type": "promptString", "id": "api-key", "password": true},],
  "servers": {
    /* a remote server */
    "context7": {
      "type": "http",
      "url": "https://mcp.context7.com/mcp", // the endpoint
      "headers": {"X-Note": "a // not a comment, /* nor this */ \\" quote",},
    },
  },
}""",
    )
    remote = servers["context7"]
    assert remote.url == "https://mcp.context7.com/mcp"
    assert dict(remote.headers) == {"X-Note": 'a // not a comment, /* nor this */ " quote'}


def test_invalid_json_reports_the_line_and_column_in_the_original_file(tmp_path: Path) -> None:
    error = client_error(tmp_path, '{\n  // comment\n  "mcpServers": {\n    "a": {"command": "x"\n  }\n')
    assert error.key is None
    assert error.problem.startswith("invalid JSON: ") and "line 6" in error.problem


def test_a_vscode_settings_file_with_an_mcp_section_is_read(tmp_path: Path) -> None:
    servers = client(tmp_path, {"editor.fontSize": 12, "mcp": {"servers": {"a": {"command": "x"}}}})
    assert list(servers) == ["a"]


def test_a_url_entry_without_a_type_is_streamable_http(tmp_path: Path) -> None:
    servers = client(tmp_path, {"mcpServers": {"api": {"url": "http://127.0.0.1:9000/mcp"}}})
    assert servers["api"].transport == "http" and servers["api"].command is None


def test_a_client_timeout_in_milliseconds_becomes_seconds(tmp_path: Path) -> None:
    servers = client(tmp_path, {"mcpServers": {"slow": {"type": "stdio", "command": "x", "timeout": 600000}}})
    assert servers["slow"].timeout == 600.0


def test_a_client_entry_can_be_disabled_or_not_enabled(tmp_path: Path) -> None:
    servers = client(
        tmp_path,
        {
            "mcpServers": {
                "a": {"command": "x", "disabled": True},
                "b": {"command": "x", "enabled": False},
                "c": {"command": "x", "enabled": True},
            }
        },
    )
    assert [s.disabled for s in servers.values()] == [True, True, False]


def test_client_only_keys_are_ignored(tmp_path: Path) -> None:
    entry = {
        "type": "http",
        "url": "https://h/mcp",
        "oauth": {"clientId": "x"},
        "headersHelper": "get-headers",
        "alwaysLoad": True,
        "icon": "x.png",
    }
    stdio = {"command": "x", "sandboxEnabled": True, "sandbox": {}, "dev": {"watch": "*.py"}}
    servers = client(tmp_path, {"mcpServers": {"a": entry, "b": stdio}})
    assert servers["a"].url == "https://h/mcp" and servers["b"].command == "x"


@pytest.mark.parametrize(
    ("document", "key", "problem"),
    [
        (
            {"mcpServers": {"a": {"type": "sse", "url": "https://h/sse"}}},
            "mcpServers.a.type",
            "transport 'sse' is not supported; use streamable HTTP",
        ),
        (
            {"mcpServers": {"a": {"type": "ws", "url": "wss://h/s"}}},
            "mcpServers.a.type",
            "transport 'ws' is not supported",
        ),
        ({"mcpServers": {"a": {"type": "grpc", "command": "x"}}}, "mcpServers.a.type", "unknown type 'grpc'"),
        ({"mcpServers": {"a": {"type": "stdio", "url": "http://h"}}}, "mcpServers.a.type", "needs a command"),
        ({"mcpServers": {"a": {"type": "http", "command": "x"}}}, "mcpServers.a.type", "needs a url"),
        (
            {"servers": {"a": {"command": "x", "envFile": "${workspaceFolder}/.env"}}},
            "servers.a.envFile",
            "envFile is not supported",
        ),
        (
            {"mcpServers": {"a": {"command": "x", "transportType": "stdio"}}},
            "mcpServers.a.transportType",
            "unknown key",
        ),
        ({"mcpServers": {"a": {"command": "x", "args": [1]}}}, "mcpServers.a.args[1]", "expected a string"),
        ({"mcpServers": {"a": {"command": "x", "timeout": -5}}}, "mcpServers.a.timeout", "greater than 0"),
        (
            {"mcpServers": {"a": {"command": "x", "disabled": False, "enabled": False}}},
            "mcpServers.a.enabled",
            "contradict",
        ),
        ({"mcpServers": {"a": "npx"}}, "mcpServers.a", "expected an object"),
        ({"mcpServers": []}, "mcpServers", "expected an object"),
        ({"mcpServers": {"Claude Preview": {"command": "x"}}}, "mcpServers.Claude Preview", "server name"),
        (
            {"servers": {"a": {"command": "x", "env": {"K": "${input:api-key}"}}}},
            "servers.a.env.K",
            "uses ${input:api-key}, a VS Code prompt the gate cannot answer; "
            "set the value in an environment variable and write ${env:NAME}",
        ),
        ({"inputs": []}, None, "no mcpServers or servers object found"),
        ({"mcpServers": {}, "servers": {}}, None, "has both mcpServers and servers"),
    ],
)
def test_a_bad_client_config_is_one_line_naming_the_file_the_key_and_the_problem(
    tmp_path: Path, document: object, key: str | None, problem: str
) -> None:
    error = client_error(tmp_path, json.dumps(document))
    assert error.key == key
    assert problem in error.problem


def test_a_client_config_that_is_not_an_object_is_an_error(tmp_path: Path) -> None:
    assert "expected a JSON object" in client_error(tmp_path, "[1, 2]").problem


# --- variables ---------------------------------------------------------------------------------------


def test_variables_expand_in_every_field_that_may_hold_them(tmp_path: Path) -> None:
    servers = client(
        tmp_path,
        {
            "mcpServers": {
                "local": {
                    "command": "${userHome}/bin/${TOOL:-tool}",
                    "args": [
                        "${workspaceFolder}/data",
                        "--token=${env:NOTES_TOKEN}",
                        "$LANG",
                        "${EMPTY:-fallback}",
                    ],
                    "env": {"A": "${NOTES_TOKEN}", "B": "${LANG:-unused}"},
                    "cwd": "${workspaceFolder}/run",
                },
                "remote": {
                    "url": "${BASE:-https://api.example.com}/mcp",
                    "headers": {"Authorization": "Bearer ${NOTES_TOKEN}"},
                },
            }
        },
    )
    local, remote = servers["local"], servers["remote"]
    assert local.command == "/home/alice/bin/tool"
    assert local.args == (f"{tmp_path}/data", "--token=s3cret", "$LANG", "fallback")
    assert dict(local.env) == {"A": "s3cret", "B": "C.UTF-8"}
    assert local.cwd == tmp_path / "run"
    assert remote.url == "https://api.example.com/mcp"
    assert dict(remote.headers) == {"Authorization": "Bearer s3cret"}


def test_variables_expand_in_gate_toml_servers_with_the_config_directory_as_workspace(tmp_path: Path) -> None:
    config = load(
        tmp_path, '[servers.notes]\ncommand = "python"\nargs = ["${workspaceFolder}/s.py", "$${NOT_A_VAR}"]\n'
    )
    assert config.servers["notes"].args == (f"{tmp_path}/s.py", "${NOT_A_VAR}")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (
            "${NOPE}",
            "environment variable NOPE is not set (used as ${NOPE}); set it or write ${NOPE:-default}",
        ),
        ("${env:NOPE}", "environment variable NOPE is not set (used as ${env:NOPE})"),
        ("${input:token}", "uses ${input:token}, a VS Code prompt the gate cannot answer"),
        ("${a.b}x", "unsupported variable ${a.b}; use ${NAME}"),
        ("${env:}", "does not name an environment variable"),
    ],
)
def test_a_variable_the_gate_cannot_expand_is_an_error_naming_it(
    tmp_path: Path, value: str, problem: str
) -> None:
    error = client_error(tmp_path, json.dumps({"mcpServers": {"a": {"command": "x", "args": ["ok", value]}}}))
    assert error.key == "mcpServers.a.args[2]"
    assert problem in error.problem


def test_user_home_needs_home_in_the_environment(tmp_path: Path) -> None:
    error = client_error(
        tmp_path, json.dumps({"mcpServers": {"a": {"command": "${userHome}/x"}}}), environ={}
    )
    assert (error.key, error.problem) == ("mcpServers.a.command", "uses ${userHome} but HOME is not set")


# --- writing [servers.*] back ------------------------------------------------------------------------


def test_servers_written_as_toml_load_back_unchanged(tmp_path: Path) -> None:
    tricky = 'quote " back\\slash tab\t newline\n bell\x07 del\x7f ${NOTES_TOKEN} $${x} é 🙂'
    servers = client(
        tmp_path / "clients",
        {
            "mcpServers": {
                "local": {
                    "command": "node",
                    "args": ["server.js", tricky],
                    "env": {"K E=Y": tricky},
                    "cwd": "sub",
                },
                "plain": {"command": "uvx", "disabled": True, "timeout": 1500},
                "remote": {"url": "https://h/mcp", "headers": {"Authorization": "Bearer ${NOTES_TOKEN}"}},
            }
        },
        environ=ENV | {"NOTES_TOKEN": "${NOTES_TOKEN}"},  # a value that looks like a variable stays literal
    )
    text = servers_to_toml(servers)
    reloaded = load(tmp_path / "gate", text).servers
    origin = str(tmp_path / "gate" / "gate.toml")
    # A [servers.*] table without cwd runs in the gate.toml folder.
    assert dict(reloaded) == {
        name: dataclasses.replace(
            spec, origin=origin, cwd=tmp_path / "gate" if spec.command and spec.cwd is None else spec.cwd
        )
        for name, spec in servers.items()
    }
    assert reloaded["local"].args[1] == tricky.replace("$${", "${")  # reading the JSON unescaped it once
    assert reloaded["plain"].timeout == 1.5


def test_servers_to_toml_writes_only_what_differs_from_the_defaults(tmp_path: Path) -> None:
    servers = client(tmp_path, {"mcpServers": {"a": {"command": "x"}}})
    assert servers_to_toml(servers) == '[servers.a]\ncommand = "x"\n'


# --- which config file -------------------------------------------------------------------------------


def test_the_config_argument_wins_over_the_environment_and_the_default(tmp_path: Path) -> None:
    environ = {"MCP_GATE_CONFIG": "/etc/gate.toml"}
    assert resolve_config_path("conf/gate.toml", environ, tmp_path) == tmp_path / "conf/gate.toml"
    assert resolve_config_path("/abs/gate.toml", environ, tmp_path) == Path("/abs/gate.toml")
    assert resolve_config_path(None, environ, tmp_path) == Path("/etc/gate.toml")
    assert resolve_config_path(None, {"MCP_GATE_CONFIG": "rel.toml"}, tmp_path) == tmp_path / "rel.toml"
    assert resolve_config_path(None, {}, tmp_path) == tmp_path / "gate.toml"
    assert resolve_config_path(None, {"MCP_GATE_CONFIG": ""}, tmp_path) == tmp_path / "gate.toml"


def test_an_import_keeps_variable_references_so_secrets_in_the_environment_are_not_copied(
    tmp_path: Path,
) -> None:
    document = {
        "servers": {
            "gh": {
                "command": "gh-mcp",
                "args": ["${workspaceFolder}/repo"],
                "env": {"GITHUB_TOKEN": "${env:GITHUB_TOKEN}", "MODE": "${MODE:-fast}"},
            },
            "api": {
                "type": "http",
                "url": "${API_BASE:-https://api.example.com}/mcp",
                "headers": {"X": "${KEY}"},
            },
        }
    }
    path = write(tmp_path / "clients", json.dumps(document), "mcp.json")
    environ = ENV | {"GITHUB_TOKEN": "ghp_secret123", "KEY": "k-secret"}
    servers = read_client_config(path, environ, keep_references=True)
    text = servers_to_toml(servers, references=True)
    assert "ghp_secret123" not in text and "k-secret" not in text
    assert '"GITHUB_TOKEN" = "${env:GITHUB_TOKEN}"' in text
    assert str(tmp_path / "clients") + "/repo" in text  # the client's own folder is resolved now
    loaded = load(tmp_path / "gate", text, environ).servers
    assert loaded["gh"].env["GITHUB_TOKEN"] == "ghp_secret123"
    assert loaded["gh"].env["MODE"] == "fast"
    assert loaded["api"].url == "https://api.example.com/mcp" and loaded["api"].headers["X"] == "k-secret"


def test_an_import_still_rejects_vs_code_input_prompts(tmp_path: Path) -> None:
    path = write(
        tmp_path, json.dumps({"servers": {"s": {"command": "x", "env": {"T": "${input:tok}"}}}}), "mcp.json"
    )
    with pytest.raises(ConfigError) as caught:
        read_client_config(path, ENV, keep_references=True)
    assert "${input:tok}" in str(caught.value)


@pytest.mark.parametrize(
    "second",
    [
        'email = "BOB@example.com"',
        'email = "robert@example.com"\naliases = ["bob@example.com"]',
        'email = "robert@example.com"\naliases = ["bob"]',
    ],
)
def test_two_approvers_sharing_an_identity_are_an_error_so_one_person_never_counts_twice(
    tmp_path: Path, second: str
) -> None:
    error = config_error(
        tmp_path,
        '[approvers.bob]\nemail = "bob@example.com"\ngroups = ["sre"]\n\n'
        f'[approvers.robert]\n{second}\ngroups = ["sre"]\n',
    )
    assert error.key == "approvers.robert" and "already belongs to approver 'bob'" in error.problem
