"""Read tool manifests (tool_manifests/*.toml): per server, ordered rules from tool and arguments to tier;
and the manifests that ship with the package, matched to servers by the package they run."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, ValidationError

from mcp_gate.approvals import parse_duration
from mcp_gate.config.files import config_error_from, read_toml
from mcp_gate.errors import ConfigError, GateError
from mcp_gate.policy import UNSET, Condition, Escalation, Manifest, Regex, Rule, Tier, compile_glob

__all__ = [
    "Shipped",
    "copy_shipped",
    "load_manifest",
    "load_manifests",
    "shipped_for",
    "shipped_manifests",
]


# --- the file format --------------------------------------------------------------------------------


def _glob(value: str) -> str:
    try:
        compile_glob(value)
    except ValueError as exc:
        raise ValueError(f"invalid glob {value!r}: {exc}") from exc
    return value


def _regex(value: str) -> str:
    Regex.compile(value)
    return value


def _reason(value: str) -> str:
    if not value.strip():
        raise ValueError("must say why the tool gets this tier")
    return value


def _duration(value: str) -> str:
    parse_duration(value)  # ValueError: "'soon' is not a duration like 90s, 30m, 2h or 1d"
    return value


def _pointer(value: str) -> str:
    if value != "" and not value.startswith("/"):
        raise ValueError(
            f"{value!r} is not a JSON pointer: it must start with '/' (or be '' for all arguments)"
        )
    if re.search(r"~(?![01])", value):
        raise ValueError(
            f"{value!r} is not a JSON pointer: '~' must be followed by 0 or 1 (~0 is '~', ~1 is '/')"
        )
    return value


Glob = Annotated[str, AfterValidator(_glob)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _ConditionModel(_Strict):
    glob: Glob | None = None
    regex: Annotated[str, AfterValidator(_regex)] | None = None
    equals: JsonValue = None
    min: float | None = None
    max: float | None = None


class _StepModel(_Strict):
    after: Annotated[str, AfterValidator(_duration)]
    to: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    channel: Annotated[str, Field(min_length=1)] | None = None


class _RuleModel(_Strict):
    tools: list[Glob] = Field(min_length=1)
    when: dict[str, _ConditionModel] = Field(default_factory=dict)
    tier: Tier
    reason: Annotated[str, AfterValidator(_reason)]
    approvers: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    escalation: list[_StepModel] = Field(default_factory=list)


class _ManifestModel(_Strict):
    server: str
    default: Tier = "high"
    trust_annotations: bool = False
    packages: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    rule: list[_RuleModel] = Field(default_factory=list)


def _condition(file: str, key: str, model: _ConditionModel) -> Condition:
    if not model.model_fields_set:
        raise ConfigError(file, key, "a condition needs at least one of glob, regex, equals, min, max")
    numeric = model.min is not None or model.max is not None
    if numeric and (model.glob is not None or model.regex is not None):
        raise ConfigError(
            file, key, "min/max check numbers and glob/regex check strings; a value is never both"
        )
    if model.min is not None and model.max is not None and model.min > model.max:
        raise ConfigError(file, f"{key}.min", f"min ({model.min:g}) is greater than max ({model.max:g})")
    return Condition(
        glob=model.glob,
        regex=Regex.compile(model.regex) if model.regex is not None else None,
        equals=model.equals if "equals" in model.model_fields_set else UNSET,
        min=model.min,
        max=model.max,
    )


def load_manifest(path: Path) -> Manifest:
    """Read one manifest file; every problem is a one-line ConfigError naming the file and key."""
    file = str(path)
    data, raw = read_toml(path)
    try:
        model = _ManifestModel.model_validate(data)
    except ValidationError as exc:
        raise config_error_from(file, exc) from exc
    rules: list[Rule] = []
    for index, rule in enumerate(model.rule, start=1):
        when: list[tuple[str, Condition]] = []
        for pointer, condition in rule.when.items():
            key = f"rule[{index}].when.{pointer}"
            try:
                _pointer(pointer)
            except ValueError as exc:
                raise ConfigError(file, key, str(exc)) from exc
            when.append((pointer, _condition(file, key, condition)))
        steps = tuple(
            Escalation(parse_duration(s.after).total_seconds(), tuple(s.to), s.channel)
            for s in rule.escalation
        )
        for number in range(1, len(steps)):
            if steps[number].after <= steps[number - 1].after:
                raise ConfigError(
                    file,
                    f"rule[{index}].escalation[{number}].after",
                    "each step must come after the one before it",
                )
        rules.append(
            Rule(
                index=index,
                tools=tuple(rule.tools),
                when=tuple(when),
                tier=rule.tier,
                reason=rule.reason,
                approvers=tuple(rule.approvers),
                escalation=steps,
            )
        )
    return Manifest(
        server=model.server,
        default=model.default,
        trust_annotations=model.trust_annotations,
        rules=tuple(rules),
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        packages=tuple(model.packages),
    )


def load_manifests(directory: Path, servers: Collection[str], *, required: bool) -> dict[str, Manifest]:
    """Every `*.toml` manifest in `directory`, by server; each must name a configured server, at most once."""
    if not directory.exists():
        if required:
            raise ConfigError(str(directory), None, "no such manifest directory (set by gate.manifests)")
        return {}
    if not directory.is_dir():
        raise ConfigError(str(directory), None, "the manifest directory is not a directory")
    manifests: dict[str, Manifest] = {}
    for path in sorted(directory.glob("*.toml")):
        manifest = load_manifest(path)
        if manifest.server not in servers:
            known = ", ".join(sorted(servers)) or "none"
            raise ConfigError(
                str(path),
                "server",
                f"{manifest.server!r} is not a server in the gate config (known: {known})",
            )
        if manifest.server in manifests:
            raise ConfigError(
                str(path),
                "server",
                f"server {manifest.server!r} already has a manifest, {manifests[manifest.server].path.name}; "
                "one manifest per server",
            )
        manifests[manifest.server] = manifest
    return manifests


# --- the manifests that ship with mcp-gate -------------------------------------------------------


@dataclass(frozen=True)
class Shipped:
    """A manifest shipped in the package (mcp_gate/tool_manifests/NAME.toml)."""

    name: str
    manifest: Manifest
    text: str


def shipped_manifests() -> dict[str, Shipped]:
    """Every shipped manifest, by name (the file's stem)."""
    shipped: dict[str, Shipped] = {}
    folder = importlib.resources.files("mcp_gate") / "tool_manifests"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".toml"):
            continue
        with importlib.resources.as_file(entry) as path:
            shipped[entry.name.removesuffix(".toml")] = Shipped(
                name=entry.name.removesuffix(".toml"),
                manifest=load_manifest(path),
                text=entry.read_text("utf-8"),
            )
    return shipped


def _package_name(token: str) -> str:
    """`@scope/pkg@1.2`, `pkg@latest`, `pkg==0.6`, `/usr/bin/pkg`, `pkg_name` -> the bare package name."""
    if not token.startswith("@"):
        token = token.rsplit("/", 1)[-1]
    at = token.find("@", 1)
    if at > 0:
        token = token[:at]
    token = re.split(r"[=<>!~\[]", token, maxsplit=1)[0]
    return token.lower().replace("_", "-")


def shipped_for(command: str | None, args: Sequence[str]) -> Shipped | None:
    """The shipped manifest written for the package a server runs (`uvx mcp-server-time`,
    `npx -y @modelcontextprotocol/server-filesystem DIR`, `python -m mcp_server_git`), if any."""
    if command is None:
        return None
    tokens = {_package_name(t) for t in (command, *args) if t and not t.startswith("-")}
    for shipped in shipped_manifests().values():
        if tokens & {p.lower().replace("_", "-") for p in shipped.manifest.packages}:
            return shipped
    return None


def copy_shipped(name: str, directory: Path, *, server: str | None = None, force: bool = False) -> Path:
    """Write shipped manifest `name` as DIRECTORY/SERVER.toml for server `server` (default: its own)."""
    shipped = shipped_manifests()
    if name not in shipped:
        known = ", ".join(shipped) or "none"
        raise GateError(
            f"no shipped manifest named {name!r} (shipped: {known}; see `mcp-gate manifests list`)"
        )
    chosen = shipped[name]
    server = server or chosen.manifest.server
    target = directory / f"{server}.toml"
    if target.exists() and not force:
        raise ConfigError(str(target), None, "already exists; pass --force to overwrite it")
    text = re.sub(r'(?m)^server = "[^"]*"', f"server = {_toml_string(server)}", chosen.text, count=1)
    directory.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string
