from __future__ import annotations

import hashlib
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from mcp_gate import manifests as manifests_module
from mcp_gate.errors import ConfigError
from mcp_gate.manifests import load_manifest, load_manifests
from mcp_gate.policy import UNSET, Condition, Manifest, Regex, classify

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "mcp_gate" / "tool_manifests"
NOTES = ROOT / "examples" / "tool_manifests" / "notes.toml"


def write(tmp_path: Path, text: str, name: str = "notes.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_manifest(path)
    return caught.value


def test_every_public_name_of_the_module_is_exported_and_every_export_exists() -> None:
    defined = {
        name
        for name, value in vars(manifests_module).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and getattr(value, "__module__", None) == manifests_module.__name__
    }
    assert defined <= set(manifests_module.__all__)
    assert all(hasattr(manifests_module, name) for name in manifests_module.__all__)


# --- reading a manifest ------------------------------------------------------------------------------


def test_a_manifest_with_only_a_server_defaults_to_high_and_untrusted_annotations(tmp_path: Path) -> None:
    path = write(tmp_path, 'server = "notes"\n')
    manifest = load_manifest(path)
    assert manifest == Manifest(
        server="notes",
        default="high",
        trust_annotations=False,
        rules=(),
        path=path,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
    )


def test_rules_keep_their_order_and_are_numbered_from_one(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
server = "notes"
default = "medium"
trust_annotations = true

[[rule]]
tools = ["read_*", "list_*"]
tier = "low"
reason = "reads only"

[[rule]]
tools = ["delete_note"]
when = { "/name" = { glob = "archive/**" }, "/id" = { regex = 'n-[0-9]+', min = 1 } }
tier = "critical"
reason = "deletes archived records"
""",
    )
    with pytest.raises(ConfigError, match=r"rule\[2\]\.when\./id: min/max check numbers"):
        load_manifest(path)
    path.write_text(path.read_text().replace(", min = 1", ""), encoding="utf-8")
    manifest = load_manifest(path)
    assert (manifest.default, manifest.trust_annotations) == ("medium", True)
    first, second = manifest.rules
    assert (first.index, first.tools, first.when, first.tier, first.reason) == (
        1,
        ("read_*", "list_*"),
        (),
        "low",
        "reads only",
    )
    assert second.index == 2
    assert [pointer for pointer, _ in second.when] == ["/name", "/id"]
    assert second.when[0][1] == Condition(glob="archive/**")
    assert second.when[1][1].regex == Regex.compile("n-[0-9]+")
    assert second.when[1][1].equals is UNSET


def test_equals_keeps_the_toml_value_including_false_and_zero(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
server = "notes"
[[rule]]
tools = ["x"]
when = { "/a" = { equals = false }, "/b" = { equals = 0 }, "/c" = { equals = ["p", 1] } }
tier = "low"
reason = "r"
""",
    )
    conditions = dict(load_manifest(path).rules[0].when)
    assert conditions["/a"].equals is False and conditions["/a"].checks_equals
    assert conditions["/b"].equals == 0
    assert conditions["/c"].equals == ["p", 1]


def test_the_manifest_hash_is_of_the_file_bytes(tmp_path: Path) -> None:
    a = load_manifest(write(tmp_path, 'server = "notes"\n', "a.toml"))
    b = load_manifest(write(tmp_path, 'server = "notes" # same meaning\n', "b.toml"))
    assert a.sha256 != b.sha256


RULE = '\n[[rule]]\ntools = ["x"]\ntier = "low"\nreason = "r"\n'


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('server = "notes"\ncolour = "red"\n', "colour", "unknown key"),
        ('server = "notes"\n' + RULE + 'approvers = "dba"\n', "rule[1].approvers", "expected a list"),
        ("default = 'low'\n", "server", "required key is missing"),
        ("server = 5\n", "server", "expected a string, got an integer"),
        ('server = "notes"\ntrust_annotations = "yes"\n', "trust_annotations", "expected true or false"),
        ('server = "notes"\ndefault = "severe"\n', "default", "unknown tier 'severe'"),
        (
            'server = "notes"\n' + RULE + RULE.replace('"low"', '"urgent"'),
            "rule[2].tier",
            "unknown tier 'urgent'",
        ),
        (
            'server = "notes"\n[[rule]]\ntools = "x"\ntier = "low"\nreason = "r"\n',
            "rule[1].tools",
            "expected a list",
        ),
        (
            'server = "notes"\n[[rule]]\ntools = []\ntier = "low"\nreason = "r"\n',
            "rule[1].tools",
            "at least 1 item",
        ),
        (
            'server = "notes"\n[[rule]]\ntools = ["a", ""]\ntier = "low"\nreason = "r"\n',
            "rule[1].tools[2]",
            "empty glob",
        ),
        (
            'server = "notes"\n[[rule]]\ntools = ["read_[ab"]\ntier = "low"\nreason = "r"\n',
            "rule[1].tools[1]",
            "invalid glob 'read_[ab': unbalanced '['",
        ),
        (
            'server = "notes"\n[[rule]]\ntools = ["x"]\ntier = "low"\n',
            "rule[1].reason",
            "required key is missing",
        ),
        (
            'server = "notes"\n[[rule]]\ntools = ["x"]\ntier = "low"\nreason = "  "\n',
            "rule[1].reason",
            "must say why",
        ),
        (
            'server = "notes"\n' + RULE + 'when = { "/p" = { regex = "[a-" } }\n',
            "rule[1].when./p.regex",
            "invalid regex: ",
        ),
        (
            'server = "notes"\n' + RULE + 'when = { "/p" = { glob = "a/[b" } }\n',
            "rule[1].when./p.glob",
            "unbalanced",
        ),
        (
            'server = "notes"\n' + RULE + 'when = { "/p" = {} }\n',
            "rule[1].when./p",
            "needs at least one of glob",
        ),
        (
            'server = "notes"\n' + RULE + 'when = { "/p" = { min = 5, max = 1 } }\n',
            "rule[1].when./p.min",
            "greater than max",
        ),
        (
            'server = "notes"\n' + RULE + 'when = { "/p" = { min = true } }\n',
            "rule[1].when./p.min",
            "expected a number",
        ),
        (
            'server = "notes"\n' + RULE + 'when = { "/p" = { like = "x" } }\n',
            "rule[1].when./p.like",
            "unknown key",
        ),
        (
            'server = "notes"\n' + RULE + 'when = { "p" = { glob = "x" } }\n',
            "rule[1].when.p",
            "must start with '/'",
        ),
        (
            'server = "notes"\n' + RULE + 'when = { "/a~2" = { glob = "x" } }\n',
            "rule[1].when./a~2",
            "'~' must be followed",
        ),
        (
            'server = "notes"\n' + RULE + 'when = { "/p" = { equals = 1979-05-27 } }\n',
            "rule[1].when./p.equals",
            "JSON value",
        ),
    ],
)
def test_a_bad_manifest_is_one_line_naming_the_file_the_key_and_the_problem(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    path = write(tmp_path, text)
    error = error_of(path)
    assert (error.file, error.key) == (str(path), key)
    assert problem in error.problem
    assert str(error).startswith(f"{path}: {key}: ")
    assert "\n" not in str(error)


def test_a_bad_regex_says_what_is_wrong_and_where(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, 'server = "notes"\n' + RULE + "when = { \"/p\" = { regex = 'ab[' } }\n"))
    assert error.problem == "invalid regex: missing ]: [ (RE2 syntax: no backreferences or lookaround)"


def test_a_toml_syntax_error_gives_the_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, 'server = "notes"\n[[rule]\n')
    error = error_of(path)
    assert error.key is None
    assert error.problem.startswith("invalid TOML: ") and "line 2" in error.problem
    assert "\n" not in str(error)


def test_a_missing_manifest_file_is_an_error(tmp_path: Path) -> None:
    error = error_of(tmp_path / "nope.toml")
    assert str(error) == f"{tmp_path / 'nope.toml'}: no such file"


# --- a directory of manifests --------------------------------------------------------------------------


def test_manifests_are_loaded_by_the_server_they_name_and_other_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, 'server = "notes"\n', "a.toml")
    write(tmp_path, 'server = "git"\n', "vcs.toml")
    write(tmp_path, "not toml at all [", "README.md")
    loaded = load_manifests(tmp_path, {"notes", "git", "time"}, required=True)
    assert {server: m.path.name for server, m in loaded.items()} == {"notes": "a.toml", "git": "vcs.toml"}


def test_a_manifest_naming_an_unknown_server_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'server = "foo"\n')
    with pytest.raises(ConfigError) as caught:
        load_manifests(tmp_path, ["b", "a"], required=False)
    assert str(caught.value) == f"{path}: server: 'foo' is not a server in the gate config (known: a, b)"


def test_two_manifests_for_one_server_are_an_error(tmp_path: Path) -> None:
    write(tmp_path, 'server = "notes"\n', "a.toml")
    second = write(tmp_path, 'server = "notes"\n', "b.toml")
    with pytest.raises(ConfigError) as caught:
        load_manifests(tmp_path, ["notes"], required=False)
    assert caught.value.file == str(second) and caught.value.key == "server"
    assert "already has a manifest, a.toml" in caught.value.problem


def test_a_missing_manifest_directory_is_empty_unless_required(tmp_path: Path) -> None:
    assert load_manifests(tmp_path / "none", ["notes"], required=False) == {}
    with pytest.raises(ConfigError, match="no such manifest directory"):
        load_manifests(tmp_path / "none", ["notes"], required=True)


def test_a_manifest_path_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    with pytest.raises(ConfigError, match="not a directory"):
        load_manifests(path, ["notes"], required=False)


# --- the manifests we ship ----------------------------------------------------------------------------

# From each server's real tools/list (mcp-server-time and mcp-server-git 2026.10.19,
# @modelcontextprotocol/server-filesystem 2026.8.31).
TIME_TOOLS = ["get_current_time", "convert_time"]
GIT_TOOLS = [
    "git_status", "git_diff_unstaged", "git_diff_staged", "git_diff", "git_commit", "git_add",
    "git_reset", "git_log", "git_create_branch", "git_checkout", "git_show", "git_branch",
]  # fmt: skip
FILESYSTEM_TOOLS = [
    "read_file", "read_text_file", "read_media_file", "read_multiple_files", "write_file", "edit_file",
    "create_directory", "list_directory", "list_directory_with_sizes", "directory_tree", "move_file",
    "search_files", "get_file_info", "list_allowed_directories",
]  # fmt: skip
MEMORY_TOOLS = [
    "create_entities", "create_relations", "add_observations", "delete_entities", "delete_observations",
    "delete_relations", "read_graph", "search_nodes", "open_nodes",
]  # fmt: skip
FETCH_TOOLS = ["fetch"]
GITHUB_TOOLS = [  # npm @modelcontextprotocol/server-github 2025.4.8
    "add_issue_comment", "create_branch", "create_issue", "create_or_update_file", "create_pull_request",
    "create_pull_request_review", "create_repository", "fork_repository", "get_file_contents", "get_issue",
    "get_pull_request", "get_pull_request_comments", "get_pull_request_files", "get_pull_request_reviews",
    "get_pull_request_status", "list_commits", "list_issues", "list_pull_requests", "merge_pull_request",
    "push_files", "search_code", "search_issues", "search_repositories", "search_users", "update_issue",
    "update_pull_request_branch",
]  # fmt: skip
EVERYTHING_TOOLS = [  # npm @modelcontextprotocol/server-everything 2026.8.31, all capabilities
    "echo", "get-annotated-message", "get-env", "get-resource-links", "get-resource-reference",
    "get-structured-content", "get-sum", "get-tiny-image", "gzip-file-as-resource",
    "toggle-simulated-logging", "toggle-subscriber-updates", "trigger-long-running-operation",
    "get-roots-list",
    "trigger-elicitation-request", "trigger-url-elicitation", "trigger-sampling-request",
    "simulate-research-query", "trigger-sampling-request-async", "trigger-elicitation-request-async",
]  # fmt: skip
NOTES_TOOLS = ["echo", "list_notes", "read_note", "append_note", "write_note", "delete_note", "purge_notes"]


@pytest.fixture(scope="module")
def shipped() -> dict[str, Manifest]:
    servers = ["time", "git", "filesystem", "memory", "fetch", "github", "everything", "other"]
    loaded = load_manifests(SHIPPED, servers, required=True)
    loaded["notes"] = load_manifest(NOTES)
    return loaded


def tier(manifest: Manifest, tool: str, arguments: dict[str, Any] | None = None) -> str:
    return classify(tool, None, {} if arguments is None else arguments, manifest).tier


@pytest.mark.parametrize(
    ("server", "tools"),
    [
        ("time", TIME_TOOLS),
        ("git", GIT_TOOLS),
        ("filesystem", FILESYSTEM_TOOLS),
        ("notes", NOTES_TOOLS),
        ("memory", MEMORY_TOOLS),
        ("fetch", FETCH_TOOLS),
        ("github", GITHUB_TOOLS),
        ("everything", EVERYTHING_TOOLS),
    ],
)
def test_every_tool_of_a_shipped_server_is_named_by_a_rule_and_unknown_tools_are_high(
    shipped: dict[str, Manifest], server: str, tools: list[str]
) -> None:
    manifest = shipped[server]
    for tool in tools:
        decision = classify(tool, None, None, manifest)
        # a tool whose every rule has argument conditions (fetch) is named by them all the same
        assert decision.source == "rule" or decision.conditional, tool
    assert classify("tool_from_a_future_version", {"readOnlyHint": True}, None, manifest).tier == "high"
    assert all(len(rule.reason) > 20 for rule in manifest.rules)


def test_the_memory_manifest_reads_freely_confirms_additions_and_holds_deletions(
    shipped: dict[str, Manifest],
) -> None:
    memory = shipped["memory"]
    assert {t: tier(memory, t) for t in MEMORY_TOOLS} == {
        "read_graph": "low", "search_nodes": "low", "open_nodes": "low",
        "create_entities": "medium", "create_relations": "medium", "add_observations": "medium",
        "delete_entities": "high", "delete_observations": "high", "delete_relations": "high",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/page?q=1", "medium"),
        ("http://docs.python.org", "medium"),
        ("https://10.example.com/", "medium"),
        ("http://localhost:8080/admin", "high"),
        ("http://127.0.0.1/", "high"),
        ("http://169.254.169.254/latest/meta-data/", "high"),
        ("http://10.0.0.5/", "high"),
        ("http://192.168.1.1/", "high"),
        ("http://172.20.0.1:9000/", "high"),
        ("http://[::1]/", "high"),
        ("http://intranet/", "high"),
        ("http://2130706433/", "high"),
        ("http://0x7f000001/", "high"),
        ("http://printer.local/", "high"),
        ("http://metadata.google.internal/computeMetadata/v1/", "high"),
        ("http://user@localhost/", "high"),
        ("file:///etc/passwd", "high"),
        ("example.com", "high"),
    ],
)
def test_the_fetch_manifest_confirms_public_urls_and_holds_private_ones(
    shipped: dict[str, Manifest], url: str, expected: str
) -> None:
    assert tier(shipped["fetch"], "fetch", {"url": url}) == expected


def test_the_github_manifest_reads_freely_confirms_changes_and_needs_two_approvers_to_merge(
    shipped: dict[str, Manifest],
) -> None:
    github = shipped["github"]
    for tool in ("get_file_contents", "list_issues", "search_code", "get_pull_request", "issue_read"):
        assert tier(github, tool) == "low", tool
    for tool in ("create_issue", "update_issue", "add_issue_comment", "create_pull_request", "create_branch"):
        assert tier(github, tool) == "medium", tool
    for tool in ("push_files", "create_or_update_file", "delete_file", "run_workflow"):
        assert tier(github, tool) == "high", tool
    assert tier(github, "merge_pull_request") == "critical"


def test_the_everything_manifest_holds_the_tools_that_reveal_the_environment(
    shipped: dict[str, Manifest],
) -> None:
    everything = shipped["everything"]
    assert tier(everything, "get-env") == tier(everything, "printEnv") == "high"
    for tool in ("echo", "add", "get-sum", "trigger-long-running-operation", "longRunningOperation"):
        assert tier(everything, tool) == "low", tool
    assert tier(everything, "gzip-file-as-resource") == "medium"
    assert tier(everything, "trigger-sampling-request") == "medium"


def test_the_time_manifest_lets_its_clock_tools_run(shipped: dict[str, Manifest]) -> None:
    assert [tier(shipped["time"], t) for t in TIME_TOOLS] == ["low", "low"]


def test_the_git_manifest_reads_freely_and_needs_approval_to_stage_or_commit(
    shipped: dict[str, Manifest],
) -> None:
    git = shipped["git"]
    for tool in ("git_status", "git_diff", "git_log", "git_show", "git_branch"):
        assert tier(git, tool) == "low"
    assert tier(git, "git_add", {"files": ["."]}) == "high"
    assert tier(git, "git_commit", {"message": "x"}) == "high"
    assert tier(git, "git_reset") == "medium"
    assert tier(git, "git_checkout") == "medium"
    assert tier(git, "git_create_branch") == "low"


def test_the_filesystem_manifest_reads_freely_and_holds_writes(shipped: dict[str, Manifest]) -> None:
    fs = shipped["filesystem"]
    assert tier(fs, "read_text_file", {"path": "/etc/shadow"}) == "low"
    assert tier(fs, "write_file", {"path": "/home/a/project/notes.md"}) == "high"
    assert tier(fs, "edit_file", {"path": "/home/a/project/notes.md"}) == "high"
    assert tier(fs, "move_file", {"source": "/home/a/x", "destination": "/home/a/y"}) == "high"
    assert tier(fs, "create_directory", {"path": "/home/a/new"}) == "medium"


@pytest.mark.parametrize(
    ("tool", "arguments", "expected"),
    [
        ("write_file", {"path": "/home/a/.ssh/authorized_keys"}, "blocked"),
        ("write_file", {"path": "~/.SSH/config"}, "blocked"),
        ("create_directory", {"path": "/home/a/.aws"}, "blocked"),
        ("move_file", {"source": "/home/a/.gnupg/key", "destination": "/tmp/k"}, "blocked"),
        ("move_file", {"source": "/tmp/k", "destination": "/home/a/.ssh/id_rsa"}, "blocked"),
        ("write_file", {"path": "/srv/app/../../etc/passwd"}, "blocked"),
        ("move_file", {"source": "/tmp/x", "destination": "/srv/../root/x"}, "blocked"),
        ("write_file", {"path": "/etc/hosts"}, "critical"),
        ("edit_file", {"path": "/repo/.git/hooks/pre-commit"}, "critical"),
        ("write_file", {"path": "/home/a/.bashrc"}, "critical"),
        ("move_file", {"source": "/tmp/x", "destination": "/etc/cron.d/job"}, "critical"),
        ("write_file", {"path": "/etcetera/notes"}, "high"),
        ("write_file", {"path": "/home/a/sshkeys.txt"}, "high"),
        ("write_file", {"path": "/home/a/v1..v2.txt"}, "high"),
    ],
)
def test_the_filesystem_manifest_raises_writes_to_sensitive_paths(
    shipped: dict[str, Manifest], tool: str, arguments: dict[str, Any], expected: str
) -> None:
    assert tier(shipped["filesystem"], tool, arguments) == expected


def test_listing_the_filesystem_write_tools_says_their_tier_depends_on_the_arguments(
    shipped: dict[str, Manifest],
) -> None:
    decision = classify("write_file", None, None, shipped["filesystem"])
    assert (decision.tier, decision.conditional) == ("high", True)
    assert classify("read_file", None, None, shipped["filesystem"]).conditional is False


def test_the_notes_manifest_matches_the_example_server(shipped: dict[str, Manifest]) -> None:
    notes = shipped["notes"]
    assert tier(notes, "list_notes") == "low"
    assert tier(notes, "read_note", {"name": "a"}) == "low"
    assert tier(notes, "append_note", {"name": "a", "text": "b"}) == "medium"
    assert tier(notes, "write_note", {"name": "a", "text": "b"}) == "high"
    assert tier(notes, "delete_note", {"name": "inbox/a"}) == "high"
    assert tier(notes, "delete_note", {"name": "archive/2025/a"}) == "critical"
    assert tier(notes, "purge_notes") == "blocked"
    assert classify("delete_note", None, None, notes).conditional is True


async def _listed_tools(*args: str) -> list[str]:
    async with Client(
        StdioServerParameters(command=sys.executable, args=list(args)), mode="legacy"
    ) as client:
        return [tool.name for tool in (await client.list_tools()).tools]


@pytest.mark.anyio
async def test_the_shipped_tool_lists_match_what_the_python_servers_really_list(tmp_path: Path) -> None:
    assert sorted(await _listed_tools("-m", "mcp_server_time")) == sorted(TIME_TOOLS)
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    assert sorted(await _listed_tools("-m", "mcp_server_git", "--repository", str(repo))) == sorted(GIT_TOOLS)


# --- shipped manifests: package data, matched to servers by package ----------------------------------


def test_the_shipped_manifests_are_package_data_and_each_names_the_packages_it_fits() -> None:
    import importlib.resources

    from mcp_gate.manifests import shipped_manifests

    folder = importlib.resources.files("mcp_gate") / "tool_manifests"
    files = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".toml"))
    assert {"filesystem.toml", "git.toml", "time.toml", "memory.toml", "fetch.toml", "github.toml"} <= set(
        files
    )
    assert "everything.toml" in files
    shipped = shipped_manifests()
    assert sorted(shipped) == [name.removesuffix(".toml") for name in files]
    assert all(s.manifest.packages for s in shipped.values())
    # setuptools installs exactly what package-data names: the pattern must cover these files
    assert 'mcp_gate = ["py.typed", "tool_manifests/*.toml"]' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        ("uvx", ["mcp-server-time", "--local-timezone", "UTC"], "time"),
        ("uvx", ["mcp-server-time@latest"], "time"),
        ("npx", ["-y", "@modelcontextprotocol/server-filesystem", "/home/a/project"], "filesystem"),
        ("npx", ["-y", "@modelcontextprotocol/server-filesystem@2025.8.21", "/tmp"], "filesystem"),
        ("python", ["-m", "mcp_server_git", "--repository", "."], "git"),
        ("/usr/local/bin/mcp-server-git", [], "git"),
        ("uvx", ["mcp-server-fetch"], "fetch"),
        ("npx", ["-y", "@modelcontextprotocol/server-memory"], "memory"),
        (
            "docker",
            ["run", "-i", "--rm", "-e", "GITHUB_PERSONAL_ACCESS_TOKEN", "ghcr.io/github/github-mcp-server"],
            "github",
        ),
        ("npx", ["-y", "some-other-server"], None),
        (None, [], None),
    ],
)
def test_a_server_is_matched_to_the_shipped_manifest_for_the_package_it_runs(
    command: str | None, args: list[str], expected: str | None
) -> None:
    from mcp_gate.manifests import shipped_for

    found = shipped_for(command, args)
    assert (found.name if found else None) == expected


def test_copying_a_shipped_manifest_renames_its_server_and_never_overwrites_without_force(
    tmp_path: Path,
) -> None:
    from mcp_gate.errors import GateError
    from mcp_gate.manifests import copy_shipped

    target = copy_shipped("time", tmp_path / "m", server="clock")
    assert target == tmp_path / "m" / "clock.toml"
    assert load_manifest(target).server == "clock"
    target.write_text("mine")
    with pytest.raises(ConfigError, match="already exists; pass --force"):
        copy_shipped("time", tmp_path / "m", server="clock")
    assert target.read_text() == "mine"
    copy_shipped("time", tmp_path / "m", server="clock", force=True)
    assert load_manifest(target).server == "clock"
    with pytest.raises(GateError, match="no shipped manifest named 'nope'"):
        copy_shipped("nope", tmp_path)
