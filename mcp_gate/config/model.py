"""The validated configuration as frozen values: what the rest of the gate reads, never a file."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from mcp_gate.approvals import Approver
from mcp_gate.config.files import decode, read_bytes
from mcp_gate.errors import ConfigError
from mcp_gate.policy import Escalation as Escalation  # re-exported: a tier's steps are config
from mcp_gate.policy import Requirement, Tier
from mcp_gate.redaction import RedactionRules

ProtocolEra = Literal["legacy", "auto", "2026-07-28"]
Mode = Literal["enforce", "shadow"]


@dataclass(frozen=True)
class Requester:
    """Who calls: the agent principal and the human it acts for. `hold_seconds` is this
    requester's own hold budget (None: `[approvals] hold_seconds`), set below its client's timeout.

    A requester from the identity provider's access token also carries the token's issuer, its
    subject (the person; None for a client acting as itself), their email and name as the token
    claims them, the SHA-256 of its `jti`, and its scopes (None: a static requester, unscoped)."""

    agent: str
    owner: str
    hold_seconds: float | None = None
    issuer: str | None = None
    subject: str | None = None
    email: str | None = None
    name: str | None = None
    jti_sha256: str | None = None
    scopes: frozenset[str] | None = None

    def recorded(self) -> dict[str, Any]:
        """As every record of a call names it: agent and owner, and for a token from the identity
        provider its issuer, subject, email, name and hashed jti (never the token)."""
        shown: dict[str, Any] = {"agent": self.agent, "owner": self.owner}
        if self.issuer is not None:
            shown |= {"iss": self.issuer, "sub": self.subject, "email": self.email, "name": self.name}
            shown["jti_sha256"] = self.jti_sha256
        return shown


@dataclass(frozen=True)
class Agent:
    """An HTTP requester, identified by the SHA-256 of its bearer token."""

    name: str
    token_sha256: str
    owner: str
    hold_seconds: float | None = None

    def requester(self) -> Requester:
        return Requester(agent=self.name, owner=self.owner, hold_seconds=self.hold_seconds)


@dataclass(frozen=True)
class ServerSpec:
    """One downstream server, variables expanded and paths absolute."""

    name: str
    command: str | None
    args: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path | None
    url: str | None
    headers: Mapping[str, str]
    timeout: float
    protocol: ProtocolEra
    disabled: bool
    origin: str

    @property
    def transport(self) -> Literal["stdio", "http", "in-process"]:
        if self.command is not None:
            return "stdio"
        # Neither a command nor a URL: served in the gate's own process by an embedding program
        # or a test (`runtime.open_gate(servers=...)`); gate.toml cannot say this.
        return "http" if self.url is not None else "in-process"


@dataclass(frozen=True)
class ApprovalSettings:
    """How held calls behave: hold budget, progress interval, default expiry, pending limit, and
    each tier's escalation."""

    hold_seconds: float = 45.0
    progress_seconds: float = 5.0
    expires_after: float = 15 * 60.0
    max_pending: int = 10
    # Each tier's escalation steps, in the order of their `after`.
    escalations: Mapping[str, tuple[Escalation, ...]] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ConsoleSettings:
    """The console: served on the admin listener at /console when `enabled`, and by
    `mcp-gate console` on `listen`. `public_url` is where people reach it (links in chat, the CLI,
    the agent's errors); `secret_file` holds the key that signs its cookies (never gate.toml)."""

    enabled: bool
    public_url: str | None
    session_seconds: float
    secret_file: Path
    listen: tuple[str, int] | None = None
    login_attempts: int = 5  # failed logins a client may make per minute
    operators: tuple[str, ...] = ()  # approver groups that may accept a changed tool's definition here

    def request_url(self, request_id: str) -> str | None:
        """The console page of one request, or None without a public URL."""
        if self.public_url is None:
            return None
        return f"{self.public_url.rstrip('/')}/requests/{request_id}"


@dataclass(frozen=True)
class EmailSettings:
    """[email]: requests mailed to their eligible approvers over SMTP, with Approve and Deny links to
    the console (each signed, single-use and short-lived; a link alone never decides). The SMTP
    password comes from `password` (an environment variable or a file), never from gate.toml."""

    smtp_host: str
    smtp_port: int
    sender: str
    starttls: bool = True
    username: str | None = None
    password: SlackSecret | None = None
    link_seconds: float = 15 * 60.0
    notify: tuple[str, ...] = ()  # addresses told of every request, who cannot decide it
    ca_pem: str | None = None  # certificates to trust for the SMTP server (else the system's)


@dataclass(frozen=True)
class WebhookSettings:
    """[webhook]: every request and outcome POSTed as JSON to `url`, signed with HMAC-SHA256 over
    the timestamp and body under a secret from the environment or a file; retried with backoff."""

    url: str
    secret: SlackSecret
    attempts: int = 6
    backoff: float = 0.5  # seconds before the first retry; doubled after each


@dataclass(frozen=True)
class AdminSettings:
    """The admin listener (the approvers' API, health and metrics): where it listens, and the
    SHA-256 of the token a scraper shows for /metrics when it listens beyond loopback."""

    host: str
    port: int
    allow_remote: bool = False
    scrape_token_sha256: str | None = None


@dataclass(frozen=True)
class HttpSettings:
    """Limits of every HTTP listener (the agent front and the approvers' API): how long a client
    may take to send its headers and its body, how many connections are served at once, how big
    a body may be, and which Host names (besides loopback ones) requests may address."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 256
    max_body_bytes: int = 1024 * 1024
    admin_max_body_bytes: int = 64 * 1024
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class PinSettings:
    """Pinned tool definitions: whether a tool a server adds after its tools were first pinned is
    quarantined until accepted (`quarantine`) or pinned as seen (`trust`), and how long the re-list
    before a held or high call may take."""

    new_tools: Literal["quarantine", "trust"] = "quarantine"
    recheck_timeout: float = 10.0


@dataclass(frozen=True)
class ElicitationSettings:
    """Asking the person at the agent: what a confirm tier does when their client cannot be asked
    (`approve`: hold for one approver; `deny`: refuse), and which tiers ask why before approvers see it."""

    medium_fallback: Literal["approve", "deny"] = "approve"
    ask_justification: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RolloutSettings:
    """Whether the gate enforces its tiers or only records what it would have done (`shadow`):
    `[tiers] mode` for every server, and a server's own `[servers.NAME] mode` over it."""

    mode: Mode = "enforce"
    servers: Mapping[str, Mode] = field(default_factory=lambda: MappingProxyType({}))

    def mode_for(self, server: str) -> Mode:
        return self.servers.get(server, self.mode)

    def describe(self) -> dict[str, Any]:
        """As recorded in `gate.started` and `policy.changed`."""
        return {"default": self.mode, "servers": dict(sorted(self.servers.items()))}


@dataclass(frozen=True)
class BreakGlassSettings:
    """Who may release one held call without its approvals (`mcp-gate breakglass`): the members of
    these approver groups. Empty, the default: nobody, break-glass is off."""

    groups: frozenset[str] = frozenset()

    def allows(self, approver: Approver) -> bool:
        return bool(self.groups & approver.groups)


@dataclass(frozen=True)
class GateConfig:
    """The validated gate.toml with every server it registers."""

    path: Path
    name: str
    data_dir: Path
    manifests_dir: Path
    manifests_required: bool
    requester: Requester
    agents: Mapping[str, Agent]
    servers: Mapping[str, ServerSpec]
    requirements: Mapping[Tier, Requirement]
    config_sha256: str
    approvers: Mapping[str, Approver] = field(default_factory=lambda: MappingProxyType({}))
    approval_settings: ApprovalSettings = field(default_factory=ApprovalSettings)
    admin: AdminSettings | None = None
    http: HttpSettings = field(default_factory=HttpSettings)
    elicitation: ElicitationSettings = field(default_factory=ElicitationSettings)
    evidence: EvidenceSettings | None = None
    slack: SlackSettings | None = None
    store: StoreSettings | None = None  # None: the SQLite file in data_dir
    teams: TeamsSettings | None = None
    redaction: RedactionRules = field(default_factory=RedactionRules)
    pins: PinSettings = field(default_factory=PinSettings)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    breakglass: BreakGlassSettings = field(default_factory=BreakGlassSettings)
    console: ConsoleSettings | None = None  # [console]: the approval console in the browser
    email: EmailSettings | None = None  # [email]: requests mailed to approvers with console links
    webhook: WebhookSettings | None = None  # [webhook]: requests and outcomes POSTed, signed
    identity: IdentitySettings | None = None  # [identity]: the organisation's identity provider
    # The gate's own files (data dir, config, manifests, signing key): a downstream call whose
    # arguments name a path inside them is blocked. Empty when [gate] protect_own_files = false.
    protected_paths: tuple[Path, ...] = ()

    def approver_by_token(self, token: str) -> Approver | None:
        """The approver whose token this is, compared by SHA-256 in constant time."""
        presented = hashlib.sha256(token.encode()).hexdigest()
        found = None
        for approver in self.approvers.values():
            if approver.token_sha256 is not None and hmac.compare_digest(approver.token_sha256, presented):
                found = approver
        return found


@dataclass(frozen=True)
class IdentitySettings:
    """[identity]: the organisation's identity provider. Agents over HTTP present its JWT access
    tokens (the gate is an OAuth 2.1 resource server for `audience`, its canonical resource URI);
    people are (issuer, subject), their email and name taken from the named claims, their approver
    groups from `groups` (approver group -> the provider's groups in `groups_claim`)."""

    issuer: str
    audience: str
    discovery_url: str | None = None  # None: issuer + /.well-known/openid-configuration
    jwks_uri: str | None = None  # None: the discovery document's
    algorithms: tuple[str, ...] = ("RS256", "ES256", "PS256", "EdDSA")
    leeway: float = 30.0
    email_claim: str = "email"
    name_claim: str = "name"
    groups_claim: str = "groups"
    agent_claims: tuple[str, ...] = ("azp", "client_id")
    owner_claim: str | None = None  # a client-credentials agent's owner, from this claim
    required_scope: str | None = None
    tier_scopes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    # A client-credentials agent's owner by its client id.
    agent_owners: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    slack_subjects: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # Slack id -> sub
    require_idp: bool = False
    refresh_seconds: float = 3600.0  # keys are fetched again this often
    max_key_age: float = 86400.0  # fetched keys are used, while the key set cannot be fetched, this long
    refetch_every: float = 30.0  # an unknown kid fetches the keys again, at most this often
    cli_client_id: str | None = None  # the public client `mcp-gate login` uses (device grant)
    cli_scopes: tuple[str, ...] = ()
    # RFC 7662 introspection of opaque access tokens: the endpoint and the gate's client there.
    introspection_url: str | None = None
    introspection_client_id: str | None = None
    introspection_secret: SlackSecret | None = None

    @property
    def discovery(self) -> str:
        return self.discovery_url or f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"

    def scopes_supported(self) -> list[str]:
        found = [self.required_scope, *self.tier_scopes.values()]
        return list(dict.fromkeys(s for s in found if s is not None))


@dataclass(frozen=True)
class StoreSettings:
    """gate.toml's [store]: a PostgreSQL database that any number of gate processes share.

    `url` carries the password (from the environment or a password file, never from gate.toml):
    it is kept out of `repr`, and everything shown names the store by `where`, which has none."""

    url: str = field(repr=False)
    where: str
    pool_size: int = 4
    connect_timeout: float = 10.0
    # How long a replica's heartbeat vouches for its calls in flight; after that a live replica
    # records them as outcome_unknown.
    lease_seconds: float = 15.0


@dataclass(frozen=True)
class EvidenceSettings:
    """How the gate signs checkpoints of its evidence log, where copies go, how long records stay.

    Checkpoints are on when the key file exists (`mcp-gate keys init`) or `key` is set."""

    key_path: Path
    key_configured: bool
    key_name: str
    origin: str
    every_records: int = 1000
    every_seconds: float = 300.0
    copy_to_file: Path | None = None
    webhook_url: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_timeout: float = 5.0
    retention_seconds: float | None = None
    signer: tuple[str, ...] | None = None
    signer_pubkey: str | None = None


@dataclass(frozen=True)
class SlackSecret:
    """Where a Slack token lives: an environment variable or a file. The value is read when used,
    never stored in the config object, and `repr` shows only where it comes from."""

    what: str
    env: str | None
    file: Path | None
    section: str = "slack"  # the gate.toml table that names it

    def read(self, environ: Mapping[str, str], config_file: str) -> str:
        if self.file is not None:
            raw = read_bytes(self.file, f"no such file (named by {self.section}.{self.what}_file)")
            value = decode(self.file, raw).strip()
            if not value:
                raise ConfigError(str(self.file), None, f"the {self.what} file is empty")
            return value
        assert self.env is not None
        value = environ.get(self.env, "").strip()
        if not value:
            raise ConfigError(
                config_file,
                f"{self.section}.{self.what}_env",
                f"environment variable {self.env} is not set (it should hold the {self._holds})",
            )
        return value

    @property
    def _holds(self) -> str:
        if self.section == "email":
            return "SMTP password"
        if self.section == "webhook":
            return "webhook's signing secret"
        if self.section == "identity":
            return "client secret the gate introspects tokens with"
        return (
            f"Slack {self.what}" if self.section == "slack" else f"Teams bot's {self.what.replace('_', ' ')}"
        )

    def where(self) -> str:
        return f"file {self.file}" if self.file is not None else f"${self.env}"


@dataclass(frozen=True)
class SlackSettings:
    """Slack as an approval channel: where requests are posted, how clicks arrive, who is who."""

    team_id: str
    channel: str
    mode: Literal["socket", "http"]
    bot_token: SlackSecret
    app_token: SlackSecret | None
    signing_secret: SlackSecret | None
    api_url: str = "https://slack.com/api/"
    listen: tuple[str, int] | None = None
    tier_channels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    server_channels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    users: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # Slack id -> approver

    def channel_for(self, server: str, tier: str) -> str:
        """A server's own channel, else the tier's, else the default channel."""
        return self.server_channels.get(server) or self.tier_channels.get(tier) or self.channel


BOT_FRAMEWORK_METADATA = "https://login.botframework.com/v1/.well-known/openidconfiguration"
BOT_FRAMEWORK_ISSUER = "https://api.botframework.com"
BOT_FRAMEWORK_SCOPE = "https://api.botframework.com/.default"
BOT_FRAMEWORK_TOKEN_URL = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"


@dataclass(frozen=True)
class TeamsSettings:
    """Microsoft Teams as an approval channel: the bot, the conversation cards go to, who is who.

    The Bot Framework endpoints default to the public cloud's; a sovereign cloud (or a local fake)
    names its own."""

    app_id: str
    tenant_id: str
    app_password: SlackSecret
    service_url: str
    conversation: str
    listen: tuple[str, int]
    openid_metadata: str = BOT_FRAMEWORK_METADATA
    issuer: str = BOT_FRAMEWORK_ISSUER
    token_url: str = BOT_FRAMEWORK_TOKEN_URL
    scope: str = BOT_FRAMEWORK_SCOPE
    console_url: str | None = None
    users: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # object id -> approver

    @property
    def token_endpoint(self) -> str:
        return self.token_url.replace("{tenant}", self.tenant_id)
