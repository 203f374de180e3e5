"""gate.toml: its section models, one builder per section, the config hash, and load_config."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import rfc8785
from pydantic import AfterValidator, Field, ValidationError

from mcp_gate.approvals import Approver
from mcp_gate.config.chat_toml import slack_settings, teams_settings
from mcp_gate.config.console import console_settings, email_settings, webhook_settings
from mcp_gate.config.files import Strict, config_error_from, read_toml
from mcp_gate.config.identity import identity_settings, known_groups
from mcp_gate.config.model import (
    AdminSettings,
    Agent,
    ApprovalSettings,
    EvidenceSettings,
    GateConfig,
    HttpSettings,
    IdentitySettings,
    PinSettings,
    Requester,
    RolloutSettings,
    ServerSpec,
)
from mcp_gate.config.servers import (
    ServerSection,
    build_server,
    expand_variables,
    read_client_config,
)
from mcp_gate.config.store import store_settings
from mcp_gate.config.tiers import (
    BreakGlassSection,
    breakglass_from,
    check_groups,
    duration,
    elicitation_from,
    escalations_from,
    requirements_from,
    rollout_from,
)
from mcp_gate.errors import ConfigError
from mcp_gate.policy import Approvals, Requirement, Tier
from mcp_gate.redaction import RedactionRules

_AGENT_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_MISSING_CONFIG = "no such file; pass --config or set MCP_GATE_CONFIG"


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _sha256_hex(value: str) -> str:
    if not _SHA256_HEX.fullmatch(value):
        raise ValueError("must be 64 lowercase hex characters: the SHA-256 of the bearer token")
    return value


NonEmpty = Annotated[str, AfterValidator(_non_empty)]


class _GateSection(Strict):
    name: NonEmpty = "mcp-gate"
    data_dir: NonEmpty = ".mcp-gate"
    manifests: NonEmpty | None = None
    protect_own_files: bool = True


# A hold longer than this is not a hold but an outage; the same bound as [approvals] hold_seconds.
_MAX_HOLD_SECONDS = 3600
_HoldSeconds = Annotated[float, Field(gt=0, le=_MAX_HOLD_SECONDS)]


class _RequesterSection(Strict):
    agent: NonEmpty = "local-agent"
    owner: NonEmpty = "unknown"
    hold_seconds: _HoldSeconds | None = None


class _AgentSection(Strict):
    token_sha256: Annotated[str, AfterValidator(_sha256_hex)]
    owner: NonEmpty
    hold_seconds: _HoldSeconds | None = None


class _ApproverSection(Strict):
    email: NonEmpty
    groups: list[NonEmpty] = Field(default_factory=list)
    token_sha256: Annotated[str, AfterValidator(_sha256_hex)] | None = None
    aliases: list[NonEmpty] = Field(default_factory=list)
    slack_user: NonEmpty | list[NonEmpty] | None = None
    teams_user: NonEmpty | list[NonEmpty] | None = None  # Entra ID object ids
    subject: NonEmpty | None = None  # their subject at [identity] issuer


class _ApprovalsSection(Strict):
    hold_seconds: _HoldSeconds = 45.0
    progress_seconds: float = Field(default=5.0, gt=0, le=300)
    expires: NonEmpty = "15m"
    max_pending: int = Field(default=10, ge=1, le=10_000)


class _PinsSection(Strict):
    new_tools: Literal["quarantine", "trust"] = "quarantine"
    recheck_timeout: float = Field(default=10.0, gt=0, le=120)


class _AdminSection(Strict):
    listen: NonEmpty
    allow_remote: bool = False
    scrape_token_sha256: Annotated[str, AfterValidator(_sha256_hex)] | None = None


class _HttpSection(Strict):
    header_timeout: float = Field(default=10.0, gt=0, le=3600)
    body_timeout: float = Field(default=30.0, gt=0, le=3600)
    max_connections: int = Field(default=256, ge=1, le=100_000)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=1024**3)
    admin_max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=1024**3)
    allowed_hosts: list[NonEmpty] = Field(default_factory=list)


class _GateFile(Strict):
    servers_from: list[NonEmpty] = Field(default_factory=list)
    gate: _GateSection = Field(default_factory=_GateSection)
    requester: _RequesterSection = Field(default_factory=_RequesterSection)
    agents: dict[str, _AgentSection] = Field(default_factory=dict)
    servers: dict[str, ServerSection] = Field(default_factory=dict)
    tiers: dict[str, Any] = Field(default_factory=dict)
    approvers: dict[str, _ApproverSection] = Field(default_factory=dict)
    approvals: _ApprovalsSection = Field(default_factory=_ApprovalsSection)
    admin: _AdminSection | None = None
    http: _HttpSection = Field(default_factory=_HttpSection)
    pins: _PinsSection = Field(default_factory=_PinsSection)
    evidence: _EvidenceSection = Field(default_factory=lambda: _EvidenceSection())
    slack: dict[str, Any] | None = None
    store: dict[str, Any] | None = None
    channels: dict[str, Any] | None = None  # [channels.teams]
    redaction: _RedactionSection = Field(default_factory=lambda: _RedactionSection())
    breakglass: BreakGlassSection | None = None
    console: dict[str, Any] | None = None
    email: dict[str, Any] | None = None
    webhook: dict[str, Any] | None = None
    identity: dict[str, Any] | None = None


# --- gate.toml ---------------------------------------------------------------------------------------


def _approvers(
    file: str, model: _GateFile, agents: Mapping[str, Agent], identity: IdentitySettings | None
) -> dict[str, Approver]:
    approvers: dict[str, Approver] = {}
    tokens = {a.token_sha256: f"agent {a.name!r}" for a in agents.values()}
    identities: dict[str, str] = {}
    for name, section in model.approvers.items():
        key = f"approvers.{name}"
        if not _AGENT_NAME.fullmatch(name):
            raise ConfigError(file, key, "approver name must be 1-64 letters, digits, '_', '.', '@' or '-'")
        if section.token_sha256 is not None:
            if section.token_sha256 in tokens:
                raise ConfigError(
                    file,
                    f"{key}.token_sha256",
                    f"the same token is already given to {tokens[section.token_sha256]}",
                )
            tokens[section.token_sha256] = f"approver {name!r}"
        if section.subject is not None and identity is None:
            raise ConfigError(file, f"{key}.subject", "a subject needs [identity] to name its issuer")
        approver = Approver(
            name=name,
            email=section.email,
            groups=frozenset(section.groups),
            token_sha256=section.token_sha256,
            aliases=frozenset(section.aliases),
            issuer=None if section.subject is None or identity is None else identity.issuer,
            subject=section.subject,
        )
        # One person, one approver: two entries sharing an identity would let one person count
        # twice towards a quorum.
        for known in sorted(approver.identities()):
            if known in identities and identities[known] != name:
                raise ConfigError(
                    file,
                    key,
                    f"identity {known!r} already belongs to approver {identities[known]!r}; "
                    "one person is one approver (use aliases for their other identities)",
                )
            identities[known] = name
        approvers[name] = approver
    return approvers


def _admin(file: str, section: _AdminSection | None) -> AdminSettings | None:
    if section is None:
        return None
    host, sep, port = section.listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            file, "admin.listen", f"expected HOST:PORT such as 127.0.0.1:8766, got {section.listen!r}"
        )
    if not section.allow_remote and host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(
            file, "admin.listen", f"{host} is not a loopback address; set allow_remote = true to listen on it"
        )
    return AdminSettings(host, int(port), section.allow_remote, section.scrape_token_sha256)


def load_config(path: Path, environ: Mapping[str, str]) -> GateConfig:
    """Read and validate gate.toml and the client configs it names; raise one-line ConfigErrors."""
    file = str(path)
    data, _ = read_toml(path, missing=_MISSING_CONFIG)
    try:
        model = _GateFile.model_validate(data)
    except ValidationError as exc:
        raise config_error_from(file, exc) from exc
    base = path.absolute().parent

    servers: dict[str, ServerSpec] = {}
    for name, section in model.servers.items():
        servers[name] = build_server(
            name, section, file=file, key=f"servers.{name}", base=base, environ=environ
        )
    for i, entry in enumerate(model.servers_from, start=1):
        key = f"servers_from[{i}]"
        client_path = base / expand_variables(entry, file, key, environ, base)
        if not client_path.exists():
            raise ConfigError(file, key, f"no such file: {client_path}")
        for name, spec in read_client_config(client_path, environ).items():
            if name in servers:
                raise ConfigError(
                    file,
                    key,
                    f"server {name!r} from {client_path} is already defined in {servers[name].origin}; "
                    "a server name may appear only once",
                )
            servers[name] = spec

    agents: dict[str, Agent] = {}
    seen_tokens: dict[str, str] = {}
    for name, agent in model.agents.items():
        if not _AGENT_NAME.fullmatch(name):
            raise ConfigError(
                file, f"agents.{name}", "agent name must be 1-64 letters, digits, '_', '.', '@' or '-'"
            )
        if agent.token_sha256 in seen_tokens:
            raise ConfigError(
                file,
                f"agents.{name}.token_sha256",
                f"the same token is already given to agent {seen_tokens[agent.token_sha256]!r}",
            )
        seen_tokens[agent.token_sha256] = name
        agents[name] = Agent(
            name=name, token_sha256=agent.token_sha256, owner=agent.owner, hold_seconds=agent.hold_seconds
        )

    identity = identity_settings(file, model.identity, base)
    approvers = _approvers(file, model, agents, identity)
    tiers, rollout = rollout_from(file, model.tiers, {n: s.mode for n, s in model.servers.items()})
    tiers, elicitation = elicitation_from(file, tiers)
    tiers, escalations = escalations_from(file, tiers, approvers)
    requirements = requirements_from(file, tiers)
    check_groups(file, requirements, approvers, known_groups(identity))
    settings = ApprovalSettings(
        hold_seconds=model.approvals.hold_seconds,
        progress_seconds=model.approvals.progress_seconds,
        expires_after=duration(file, "approvals.expires", model.approvals.expires),
        max_pending=model.approvals.max_pending,
        escalations=MappingProxyType(escalations),
    )
    manifests = model.gate.manifests
    fields: dict[str, Any] = {
        "path": path.absolute(),
        "name": model.gate.name,
        "data_dir": base / model.gate.data_dir,
        "manifests_dir": base / (manifests if manifests is not None else "tool_manifests"),
        "manifests_required": manifests is not None,
        "requester": Requester(
            agent=model.requester.agent,
            owner=model.requester.owner,
            hold_seconds=model.requester.hold_seconds,
        ),
        "agents": MappingProxyType(agents),
        "servers": MappingProxyType(servers),
        "requirements": MappingProxyType(requirements),
        "approvers": MappingProxyType(approvers),
        "approval_settings": settings,
        "admin": _admin(file, model.admin),
        "http": HttpSettings(**{**model.http.model_dump(), "allowed_hosts": tuple(model.http.allowed_hosts)}),
        "elicitation": elicitation,
        "slack": slack_settings(file, model.slack, base, model.approvers, approvers, servers),
        "teams": teams_settings(file, model.channels, base, model.approvers, approvers, servers),
        "pins": PinSettings(new_tools=model.pins.new_tools, recheck_timeout=model.pins.recheck_timeout),
        "store": store_settings(file, model.store, base, environ),  # not hashed: its url has the password
        "rollout": rollout,
        "breakglass": breakglass_from(file, model.breakglass, approvers),
        "identity": identity,
    }
    evidence = _evidence(file, model.evidence, base / model.gate.data_dir, model.gate.name, environ)
    redaction = _redaction(file, model.redaction)
    protected: tuple[Path, ...] = ()
    if model.gate.protect_own_files:
        own = [fields["path"], fields["data_dir"], fields["manifests_dir"]]
        if evidence is not None:
            own.append(evidence.key_path)
        protected = tuple(dict.fromkeys(p.resolve() for p in own))
    fields["protected_paths"] = protected
    # Not hashed: where the console is served changes no decision.
    console = console_settings(file, model.console, base, base / model.gate.data_dir)
    return GateConfig(
        **fields,
        evidence=evidence,
        redaction=redaction,
        console=console,
        email=email_settings(file, model.email, base, console),
        webhook=webhook_settings(file, model.webhook, base),
        config_sha256=_config_sha256(fields),
    )


# --- [redaction]: what counts as a secret beyond the built-in detectors ------------------------------


class _RedactionSection(Strict):
    secret_keys: list[NonEmpty] = Field(default_factory=list)
    patterns: list[NonEmpty] = Field(default_factory=list)
    entropy: bool = True
    entropy_limit: float = Field(default=4.5, ge=3.0, le=8.0)
    hex_entropy_limit: float | None = Field(default=None, ge=2.0, le=8.0)


def _redaction(file: str, section: _RedactionSection) -> RedactionRules:
    for index, pattern in enumerate(section.patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(
                file, f"redaction.patterns[{index}]", f"not a regular expression: {exc}"
            ) from exc
    return RedactionRules(
        secret_keys=tuple(section.secret_keys),
        patterns=tuple(section.patterns),
        entropy_limit=section.entropy_limit if section.entropy else None,
        hex_entropy_limit=section.hex_entropy_limit,
    )


# --- [evidence]: signed checkpoints, their copies, retention -------------------------------------------


class _EvidenceSection(Strict):
    key: NonEmpty | None = None
    key_name: NonEmpty | None = None
    origin: NonEmpty | None = None
    checkpoint_every_records: int = Field(default=1000, ge=1, le=10_000_000)
    checkpoint_every: NonEmpty = "5m"
    copy_to_file: NonEmpty | None = None
    webhook_url_env: NonEmpty | None = None
    webhook_secret_env: NonEmpty | None = None
    webhook_timeout: float = Field(default=5.0, gt=0, le=60)
    retention: NonEmpty | None = None
    signer: list[NonEmpty] | None = Field(default=None, min_length=1)
    signer_pubkey: NonEmpty | None = None


def _evidence(
    file: str, section: _EvidenceSection, data_dir: Path, gate_name: str, environ: Mapping[str, str]
) -> EvidenceSettings:
    def from_env(key: str, name: str | None) -> str | None:
        if name is None:
            return None
        value = environ.get(name)
        if not value:
            raise ConfigError(file, key, f"environment variable {name} is not set")
        return value

    url = from_env("evidence.webhook_url_env", section.webhook_url_env)
    if url is not None and not url.startswith(("https://", "http://")):
        raise ConfigError(
            file, "evidence.webhook_url_env", f"{section.webhook_url_env} is not an http(s) URL"
        )
    secret = from_env("evidence.webhook_secret_env", section.webhook_secret_env)
    if secret is not None and url is None:
        raise ConfigError(file, "evidence.webhook_secret_env", "needs evidence.webhook_url_env")
    every = duration(file, "evidence.checkpoint_every", section.checkpoint_every)
    if every <= 0:
        raise ConfigError(file, "evidence.checkpoint_every", "must be longer than zero")
    retention = None if section.retention is None else duration(file, "evidence.retention", section.retention)
    if retention is not None and retention < 86400:
        raise ConfigError(file, "evidence.retention", "must be at least 1d")
    if (section.signer is None) != (section.signer_pubkey is None):
        missing = "evidence.signer_pubkey" if section.signer is not None else "evidence.signer"
        raise ConfigError(file, missing, "a separate signer needs both signer and signer_pubkey")
    if section.signer is not None and section.key is not None:
        raise ConfigError(file, "evidence.signer", "give either key or signer, not both")
    name = section.key_name or _note_name(gate_name)
    if not re.fullmatch(r"[^\s+]{1,128}", name):
        raise ConfigError(file, "evidence.key_name", "1-128 characters, no spaces and no '+'")
    origin = section.origin or f"mcp-gate/{gate_name}"
    if "\n" in origin:
        raise ConfigError(file, "evidence.origin", "must be one line")
    base = data_dir.parent if section.key is None else Path(file).absolute().parent
    return EvidenceSettings(
        key_path=data_dir / "signing.key" if section.key is None else base / section.key,
        key_configured=section.key is not None,
        key_name=name,
        origin=origin,
        every_records=section.checkpoint_every_records,
        every_seconds=every,
        copy_to_file=None
        if section.copy_to_file is None
        else Path(file).absolute().parent / section.copy_to_file,
        webhook_url=url,
        webhook_secret=secret,
        webhook_timeout=section.webhook_timeout,
        retention_seconds=retention,
        signer=None if section.signer is None else _signer_command(file, section.signer),
        signer_pubkey=section.signer_pubkey,
    )


def _signer_command(file: str, command: list[str]) -> tuple[str, ...]:
    """A relative path to the signer program is taken from gate.toml's folder, like other paths."""
    program = command[0]
    if "/" in program and not Path(program).is_absolute():
        program = str(Path(file).absolute().parent / program)
    return (program, *command[1:])


def _note_name(gate_name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in gate_name).strip("-") or "gate"
    return f"mcp-gate-{cleaned}"[:128]


def _secret(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _requirement_json(requirement: Requirement) -> dict[str, Any]:
    if isinstance(requirement, Approvals):
        return {
            "approvals": requirement.count,
            "groups": list(requirement.groups),
            "expires_after": requirement.expires_after,
        }
    return {"kind": type(requirement).__name__.lower()}


def _hold(hold_seconds: float | None) -> dict[str, float]:
    # Only when set, so a config without per-requester holds keeps the digest it had.
    return {} if hold_seconds is None else {"hold_seconds": hold_seconds}


def _config_sha256(fields: Mapping[str, Any]) -> str:
    requester: Requester = fields["requester"]
    agents: Mapping[str, Agent] = fields["agents"]
    servers: Mapping[str, ServerSpec] = fields["servers"]
    requirements: Mapping[Tier, Requirement] = fields["requirements"]
    document = {
        "path": str(fields["path"]),
        "name": fields["name"],
        "data_dir": str(fields["data_dir"]),
        "manifests_dir": str(fields["manifests_dir"]),
        "manifests_required": fields["manifests_required"],
        "requester": {"agent": requester.agent, "owner": requester.owner} | _hold(requester.hold_seconds),
        "agents": {
            n: {"token_sha256": a.token_sha256, "owner": a.owner} | _hold(a.hold_seconds)
            for n, a in agents.items()
        },
        "servers": {
            n: {
                "command": s.command,
                "args": list(s.args),
                "env": {k: _secret(v) for k, v in s.env.items()},
                "cwd": None if s.cwd is None else str(s.cwd),
                "url": s.url,
                "headers": {k: _secret(v) for k, v in s.headers.items()},
                "timeout": s.timeout,
                "protocol": s.protocol,
                "disabled": s.disabled,
                "origin": s.origin,
            }
            for n, s in servers.items()
        },
        "requirements": {t: _requirement_json(r) for t, r in requirements.items()},
        "approvers": {
            n: {
                "email": a.email,
                "groups": sorted(a.groups),
                "token_sha256": a.token_sha256,
                "aliases": sorted(a.aliases),
            }
            for n, a in fields["approvers"].items()
        },
        "approvals": {
            "hold_seconds": fields["approval_settings"].hold_seconds,
            "progress_seconds": fields["approval_settings"].progress_seconds,
            "expires_after": fields["approval_settings"].expires_after,
            "max_pending": fields["approval_settings"].max_pending,
        },
        "elicitation": {
            "medium_fallback": fields["elicitation"].medium_fallback,
            "ask_justification": sorted(fields["elicitation"].ask_justification),
        },
    }
    if fields["pins"] != PinSettings():  # only when set, so older configs keep their digest
        document["pins"] = asdict(fields["pins"])
    if fields["rollout"] != RolloutSettings():  # shadow mode is a policy of its own
        document["rollout"] = fields["rollout"].describe()
    if fields["approval_settings"].escalations:
        # One step as before (so a config of one step keeps its digest), several as a list.
        document["escalations"] = {
            t: asdict(steps[0]) if len(steps) == 1 else [asdict(e) for e in steps]
            for t, steps in sorted(fields["approval_settings"].escalations.items())
        }
    if fields["breakglass"].groups:
        document["breakglass"] = sorted(fields["breakglass"].groups)
    identity: IdentitySettings | None = fields["identity"]
    if identity is not None:  # who may call and who may decide: policy
        document["identity"] = {
            "issuer": identity.issuer,
            "audience": identity.audience,
            "algorithms": list(identity.algorithms),
            "claims": [identity.email_claim, identity.name_claim, identity.groups_claim],
            "agent_claims": list(identity.agent_claims),
            "owner_claim": identity.owner_claim,
            "required_scope": identity.required_scope,
            "tier_scopes": dict(sorted(identity.tier_scopes.items())),
            "groups": {g: list(m) for g, m in sorted(identity.groups.items())},
            "agents": dict(sorted(identity.agent_owners.items())),
            "subjects": dict(sorted(identity.slack_subjects.items())),
            "require_idp": identity.require_idp,
        }
    subjects = {n: a.subject for n, a in fields["approvers"].items() if a.subject is not None}
    if subjects:
        document["approver_subjects"] = dict(sorted(subjects.items()))
    if not fields["protected_paths"]:  # protection off: a policy of its own; on, the default, adds nothing
        document["protect_own_files"] = False
    return hashlib.sha256(rfc8785.dumps(document)).hexdigest()
