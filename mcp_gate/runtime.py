"""The composition root: the one place that opens the gate's store, notary, data-directory lock and
run marker, and downstreams, for the running gate and for the commands that work beside it.

Every writer opens the store with the gate's notary, so every writer signs checkpoints by the same
rule. Only a reader that writes nothing (a report, `audit show`, the demo looking at the log) opens
it without: opening with a notary may settle or start the signed-head file, which a reader leaves
to the writers.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import anyio

from mcp_gate import __version__
from mcp_gate.approvals import new_id
from mcp_gate.audit import AuditReport
from mcp_gate.checkpoints import VerifierKey
from mcp_gate.clock import Clock, SystemClock
from mcp_gate.config import GateConfig, TracingSettings, serve_in_process
from mcp_gate.datadir import ARGS_KEY_FILE, DECISION_KEY_FILE, DataDirLock, RunMarker, gate_db
from mcp_gate.errors import ConfigError, GateError, StoreError
from mcp_gate.events import OPEN_STATES, EventType
from mcp_gate.evidence import ARGS_DIGEST, EventFactory, args_key_id
from mcp_gate.holds import ApprovalEngine
from mcp_gate.manifests import load_manifests
from mcp_gate.notary import Notary, notary_for
from mcp_gate.policy import Manifest, policy_sha256
from mcp_gate.seals import load_key
from mcp_gate.storage import (
    copy_into_database,
    database_schema,
    file_head,
    lapsed_replica_calls,
    open_database,
    open_database_reader,
    open_reader,
    open_store,
    replica_lock,
    replica_seen,
    verify_database,
    verify_file,
)
from mcp_gate.storage.base import LogReader, Store
from mcp_gate.tracing import Tracing

if TYPE_CHECKING:
    from mcp_gate.downstream import InProcessServer
    from mcp_gate.gateway import Gateway
    from mcp_gate.metrics import GateMetrics

__all__ = [
    "decision_key",
    "gate_notary",
    "gate_tracing",
    "open_engine",
    "open_gate",
    "open_gate_store",
    "open_log_reader",
    "copy_store",
    "migrate_store",
    "read_gate_store",
    "store_exists",
    "store_where",
    "store_writable",
    "verify_gate_store",
]

log = logging.getLogger("mcp_gate.runtime")


# -- the running gate ---------------------------------------------------------------------------


@asynccontextmanager
async def open_gate(
    config: GateConfig,
    *,
    clock: Clock | None = None,
    startup_timeout: float = 30.0,
    store: Store | None = None,
    servers: Mapping[str, InProcessServer] | None = None,
    metrics: GateMetrics | None = None,
    tracing: Tracing | None = None,
) -> AsyncIterator[Gateway]:
    """The running gate: open the store, record the start, take the data directory's lock and run
    marker (recovering what a crashed run left), start the approval engine, the checkpoint timer
    and every downstream; record the stop and close it all on exit.

    A `store` given by the caller (a test's) is written to without a notary and left open.
    `servers` are SDK servers living in this process, served under their names instead of the
    command or URL gate.toml gives (or added to it): for embedding programs and tests.
    `metrics` replaces the gate's own registry (GateMetrics(enabled=False) measures nothing);
    `tracing` is where its spans go (`gate_tracing`; default: nowhere)."""
    # The call path (the SDK's client and server among it) is imported here, not with this module:
    # the commands beside the gate (`pending`, `approve`, the audit commands) never load it.
    from mcp_gate.downstream import Downstreams
    from mcp_gate.gateway import Gateway

    in_process = dict(servers or {})
    if in_process:
        config = serve_in_process(config, in_process)
    manifests = load_manifests(
        config.manifests_dir, config.servers.keys(), required=config.manifests_required
    )
    _check_rule_groups(manifests, config)
    clock = clock or SystemClock()
    own_store = store is None
    notary = notary_for(config) if own_store else None
    # On a database, this process is one replica: its lease row and its calls in flight carry this id.
    replica = new_id() if config.store is not None and own_store else None
    opened: Store = (
        store
        if store is not None
        else await _open(config, clock=clock, notary=notary, create=True, replica=replica)
    )
    try:
        downstreams = Downstreams(config.servers, log_dir=config.data_dir / "logs", in_process=in_process)
        gate = Gateway(
            config,
            manifests,
            opened,
            downstreams,
            clock,
            decision_key=decision_key(config),
            args_key=load_key(config.data_dir / ARGS_KEY_FILE, "argument digest key"),
            metrics=metrics,
            tracing=tracing,
        )
        opened.commit_observer = gate.metrics.committed if gate.metrics.enabled else None
        run = new_id()
        starts = await opened.records(event_type="gate.started")
        previous = starts[-1].body if starts else None
        await gate.record(
            "gate.started",
            None,
            run=run,
            pid=os.getpid(),
            servers=sorted(config.servers),
            manifests={name: m.sha256 for name, m in manifests.items()},
            args_digest={"alg": ARGS_DIGEST, "key_id": args_key_id(gate.args_key())},
            # The first start that names a key pins it: `audit verify` notices a swapped key.
            signing_key=None if notary is None else notary.key.verifier.to_text(),
            mode=config.rollout.describe(),
        )
        if previous is not None and previous.get("policy_sha256") != gate.policy_sha256:
            await _record_policy_change(gate, run, previous)
        async with _instance_lock(config, replica) as lock, RunMarker(config.data_dir, run) as marker:
            if lock.exclusive:
                unclean = marker.left_over()
                await _record_unclean_ends(gate, unclean)
                marker.forget(unclean)
                recovered = await gate.engine.recover(by=replica)
                if recovered:
                    log.warning("%d call(s) had no recorded outcome: recorded as outcome_unknown", recovered)
                lock.share()
            else:
                log.info("another gate serves %s; leaving calls in flight alone", config.data_dir)
            marker.create()
            stopped = "error"
            try:
                async with anyio.create_task_group() as tg:
                    await tg.start(gate.engine.run)
                    if notary is not None:
                        tg.start_soon(_checkpoint_timer, opened, notary.every_seconds)
                    if replica is not None:
                        tg.start_soon(_keep_lease, gate, cast(_Lease, lock), replica)
                    await tg.start(
                        functools.partial(
                            downstreams.run, gate.offering.tools_changed, startup_timeout=startup_timeout
                        )
                    )
                    try:
                        yield gate
                    finally:
                        tg.cancel_scope.cancel()
                stopped = "clean"
            finally:
                # Recorded before the marker goes: a gate that cannot record its stop leaves
                # the marker, and the next start says the run ended unclean.
                with anyio.CancelScope(shield=True):
                    try:
                        await gate.record("gate.stopped", None, run=run, how=stopped)
                    except GateError as exc:
                        log.error("cannot record the gate's stop: %s", exc)
                    else:
                        marker.remove()
    finally:
        opened.commit_observer = None
        if own_store:
            # A signed checkpoint at shutdown covers the last records written.
            with anyio.CancelScope(shield=True):
                await _final_checkpoint(opened)
                await opened.close()


def _check_rule_groups(manifests: Mapping[str, Manifest], config: GateConfig) -> None:
    """A rule naming an approver group nobody is in could never be approved: a config error."""
    known = {group for approver in config.approvers.values() for group in approver.groups}
    for manifest in manifests.values():
        for rule in manifest.rules:
            for group in rule.approvers:
                if group not in known:
                    raise ConfigError(
                        str(manifest.path),
                        f"rule[{rule.index}].approvers",
                        f"no approver in {config.path.name} is in group {group!r} (known: {sorted(known)})",
                    )
            for number, step in enumerate(rule.escalation):
                for group in step.groups:
                    if group not in known:
                        raise ConfigError(
                            str(manifest.path),
                            f"rule[{rule.index}].escalation[{number}].to",
                            f"no approver in {config.path.name} is in group {group!r} "
                            f"(known: {sorted(known)})",
                        )


_ENFORCING: dict[str, Any] = {"default": "enforce", "servers": {}}


async def _record_policy_change(gate: Gateway, run: str, previous: Mapping[str, Any]) -> None:
    """The policy differs from the last start's: say so, and whether enforcement changed with it
    (a start before shadow mode existed enforced everything)."""
    before: Mapping[str, Any] = previous.get("mode") or _ENFORCING
    after = gate.config.rollout.describe()
    changes = []
    if before.get("default") != after["default"]:
        changes.append(f"{before.get('default')} -> {after['default']}")
    servers = before.get("servers") or {}
    for name in sorted(set(servers) | set(after["servers"])):
        was = servers.get(name, before.get("default"))
        now = after["servers"].get(name, after["default"])
        if was != now:
            changes.append(f"{name}: {was} -> {now}")
    await gate.record(
        "policy.changed",
        None,
        run=run,
        previous_policy_sha256=previous.get("policy_sha256"),
        mode_before=before,
        mode_after=after,
        mode_change="; ".join(changes) or None,
    )


async def _record_unclean_ends(gate: Gateway, runs: list[str]) -> None:
    """Earlier runs that left their marker ended without recording a stop (killed, crashed,
    power lost): record that, naming the held calls whose agents were cut off with them."""
    if not runs:
        return
    cut_off = await _held_at_crash(gate.store)
    for run in runs:
        await gate.record("gate.unclean_stop", None, run=run, held_calls_cut_off=cut_off)
    log.warning(
        "the last run of this gate ended without a clean stop; %d held call(s) were cut off", len(cut_off)
    )


async def _held_at_crash(store: Store) -> list[dict[str, Any]]:
    """Open requests whose latest call was still being held: neither answered nor deferred."""
    open_requests = await store.read(lambda tx: tx.requests(states=OPEN_STATES))
    if not open_requests:
        return []
    latest: dict[str, tuple[int, EventType]] = {}
    # A hold begins with a request made or joined, and ends unanswered with a deferral.
    holds: tuple[EventType, ...] = ("approval.requested", "approval.joined", "call.deferred")
    for kind in holds:
        for record in await store.records(event_type=kind):
            request_id = str(record.body.get("request_id"))
            if request_id not in latest or latest[request_id][0] < record.seq:
                latest[request_id] = (record.seq, kind)
    return [
        {
            "request_id": r.id,
            "correlation_id": r.correlation_id,
            "server": r.binding.server,
            "tool": r.binding.tool,
            "state": r.state,
        }
        for r in open_requests
        if latest.get(r.id, (0, "call.deferred"))[1] != "call.deferred"
    ]


async def _keep_lease(gate: Gateway, lock: _Lease, replica: str) -> None:
    """This replica's heartbeat: renew its lease, then record as outcome_unknown the calls in
    flight of any other replica whose lease lapsed (once: the first live replica to look takes
    them). A database that cannot be reached is retried at the next beat."""
    while True:
        await anyio.sleep(lock.heartbeat_seconds)
        try:
            await lock.renew()
            taken = await gate.engine.recover(
                claim=lambda tx: lapsed_replica_calls(tx, replica), by=replica, sender=replica_seen
            )
        except GateError as exc:
            log.error("cannot renew this gate's lease or look for lapsed replicas: %s", exc)
            continue
        if taken:
            log.warning("%d call(s) of a replica whose lease lapsed: recorded as outcome_unknown", taken)


async def _checkpoint_timer(store: Store, every_seconds: float) -> None:
    """Every `every_seconds`, sign a checkpoint if the log grew: a quiet gate leaves no unsigned tail."""
    while True:
        await anyio.sleep(every_seconds)
        try:
            await store.checkpoint()
        except StoreError as exc:
            log.error("no timed checkpoint: %s", exc)


async def _final_checkpoint(store: Store) -> None:
    try:
        await store.checkpoint()
    except StoreError as exc:
        log.error("no checkpoint at shutdown: %s", exc)


# -- beside the gate ----------------------------------------------------------------------------


@asynccontextmanager
async def open_engine(config: GateConfig, *, clock: Clock | None = None) -> AsyncIterator[ApprovalEngine]:
    """An engine over the gate's store, for a process beside the gate (the approver CLI, tests):
    its decisions reach held calls through the shared file, with the gate's own policy hash."""
    if not store_exists(config):
        raise GateError(f"{store_where(config)}: no gate data here yet (has the gate run with this config?)")
    manifests = load_manifests(
        config.manifests_dir, config.servers.keys(), required=config.manifests_required
    )
    clock = clock or SystemClock()
    # The same policy hash the gate computes, so the decisions recorded here match its records.
    events = EventFactory(config.name, __version__, policy_sha256(config.config_sha256, manifests), clock)
    async with await _open(config, clock=clock, notary=notary_for(config)) as store:
        engine = ApprovalEngine(store, clock, config.approval_settings, events, decision_key(config))
        engine.require_idp = config.identity is not None and config.identity.require_idp
        yield engine


@asynccontextmanager
async def open_gate_store(config: GateConfig, *, clock: Clock | None = None) -> AsyncIterator[Store]:
    """The gate's store for a command that writes to it (`tools accept`, the audit commands'
    records, export, prune): with the gate's notary, so its commits are signed by the gate's rule."""
    async with await _open(config, clock=clock, notary=notary_for(config)) as store:
        yield store


@asynccontextmanager
async def read_gate_store(config: GateConfig) -> AsyncIterator[Store]:
    """The gate's store for a command that only reads it (`audit show`, the Slack line of `check`,
    the demo): without a notary, so opening it signs nothing and leaves the signed head alone."""
    async with await _open(config) as store:
        yield store


def open_log_reader(config: GateConfig) -> AbstractContextManager[LogReader]:
    """A consistent read-only snapshot of the gate's evidence (file or database), for a worker
    thread; it never writes to the store or creates one."""
    if config.store is not None:
        return open_database_reader(config.store.url)
    return open_reader(gate_db(config.data_dir))


async def verify_gate_store(
    config: GateConfig,
    *,
    verifiers: Sequence[VerifierKey] | None = None,
    extra_notes: Sequence[tuple[str, str]] = (),
    progress: Callable[[int, int], None] | None = None,
) -> AuditReport:
    """Verify the gate's evidence chain and checkpoints where it keeps them, writing nothing."""
    if config.store is not None:
        return await verify_database(
            config.store.url, verifiers=verifiers, extra_notes=extra_notes, progress=progress
        )
    return await verify_file(
        gate_db(config.data_dir), verifiers=verifiers, extra_notes=extra_notes, progress=progress
    )


def store_where(config: GateConfig) -> str:
    """The gate's store as messages name it: the file's path, or the database's url without its
    password."""
    return config.store.where if config.store is not None else str(gate_db(config.data_dir))


def store_exists(config: GateConfig) -> bool:
    """Whether the gate has a store to read yet: the file exists (a database always may: opening
    it says whether it holds the gate's schema)."""
    return config.store is not None or gate_db(config.data_dir).exists()


def store_writable(config: GateConfig) -> bool:
    """Whether this process may write to the store (a read-only copy of the file is left alone)."""
    return config.store is not None or os.access(gate_db(config.data_dir), os.W_OK)


async def _open(
    config: GateConfig,
    *,
    clock: Clock | None = None,
    notary: Notary | None = None,
    create: bool = False,
    replica: str | None = None,
) -> Store:
    """The gate's store as its config names it: the PostgreSQL database of [store], else the SQLite
    file in data_dir. Only the running gate gives a new database its schema (`create`), as it is
    the one that creates the file; every other command wants the schema there already."""
    if config.store is None:
        return await open_store(gate_db(config.data_dir), notary=notary, clock=clock)
    settings = config.store
    return await open_database(
        settings.url,
        clock=clock,
        notary=notary,
        pool_size=settings.pool_size,
        connect_timeout=settings.connect_timeout,
        create=create,
        replica=replica,
    )


class _Lease(Protocol):
    """The replica lock's lease (PostgreSQL only; the SQLite file's lock has none)."""

    @property
    def heartbeat_seconds(self) -> float: ...

    async def renew(self) -> None: ...


class _InstanceLock(Protocol):
    exclusive: bool

    def share(self) -> None: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc: object) -> None: ...


def _instance_lock(config: GateConfig, replica: str | None) -> _InstanceLock:
    """What tells a starting gate whether it is alone, so it may recover what a crash left in
    flight: the data directory's file lock for the SQLite file (one host), the database's replica
    lock for PostgreSQL (replicas on any number of hosts; each host's data_dir keeps its own run
    markers and keys), which also keeps this replica's lease (`replica`: None for a store a test
    handed in, which serves without one)."""
    if config.store is not None:
        settings = config.store
        return replica_lock(
            settings.url,
            replica=replica,
            lease_seconds=settings.lease_seconds,
            connect_timeout=settings.connect_timeout,
        )
    return DataDirLock(config.data_dir)


def gate_notary(config: GateConfig) -> Notary | None:
    """The gate's notary, or None when it signs no checkpoints; ConfigError for an unusable key.

    For a command that needs the key itself (export signs its bundle) or that must know before it
    starts whether the key is usable (`check`, the audit commands deciding whether to record)."""
    return notary_for(config)


def decision_key(config: GateConfig) -> bytes:
    """The deployment's decision key (`data_dir/decisions.key`, 0600, made on first use)."""
    return load_key(config.data_dir / DECISION_KEY_FILE, "decision key")


async def evidence_report(config: GateConfig, since: str | None, until: str | None) -> dict[str, Any]:
    """`audit report` of a period as a value (for the console): the chain verified, then the report."""
    from mcp_gate.report import build_report

    verified = await verify_gate_store(config)

    def build() -> dict[str, Any]:
        with open_log_reader(config) as reader:
            return build_report(reader, since=since, until=until, gate=config.name, verified=verified)

    return await anyio.to_thread.run_sync(build)


def console_key(config: GateConfig) -> bytes:
    """The key that signs the console's cookies (`[console] secret_file`, else
    `data_dir/console.key`; 0600, made on first use). Consoles that serve the same people share it."""
    if config.console is None:
        raise GateError(f"{config.path}: there is no [console] section")
    return load_key(config.console.secret_file, "console key")


# -- moving to PostgreSQL -----------------------------------------------------------------------


async def migrate_store(config: GateConfig, *, apply: bool = True) -> tuple[int, int, int]:
    """(before, after, the version this gate knows) of the [store] database's schema, after
    applying what is missing; GateError for a config without [store] (the SQLite file migrates
    itself whenever the gate opens it)."""
    if config.store is None:
        raise GateError(f"{config.path}: no [store] section names a PostgreSQL database to migrate")
    return await database_schema(config.store.url, apply=apply, connect_timeout=config.store.connect_timeout)


async def copy_store(
    data_dir: Path,
    url: str,
    *,
    verifiers: Sequence[VerifierKey] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AuditReport:
    """Copy the SQLite store in `data_dir` into the empty database at `url`, then verify the chain
    there; StoreError unless the target verifies and ends at the source's head."""
    source = gate_db(data_dir)
    if not source.is_file():
        raise GateError(f"{source}: no such store file (--from names the gate's data_dir)")
    copied = await copy_into_database(source, url, progress=progress)
    report = await verify_database(url, verifiers=verifiers)
    if not report.ok:
        raise StoreError(f"the copy does not verify: seq {report.first_bad_seq}: {report.problem}")
    if copied != await file_head(source):
        raise StoreError(f"the copy ends at seq {copied[0]}, the source elsewhere: it changed meanwhile")
    return report


def gate_tracing(settings: TracingSettings | None) -> Tracing:
    """The gate's spans as the OTEL_* variables ask (config.tracing_settings): none by default, else
    through the OpenTelemetry SDK of the `otel` extra to an OTLP/HTTP endpoint or the console.
    Shut its provider down (`tracing.provider.shutdown()`) to send the last spans."""
    if settings is None:
        return Tracing()
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError as exc:
        raise ConfigError(
            "environment", "OTEL_TRACES_EXPORTER", "traces need the otel extra: pip install 'mcp-gate[otel]'"
        ) from exc
    exporter: SpanExporter
    if settings.exporter == "console":
        exporter = ConsoleSpanExporter(out=sys.stderr)  # stdout is the MCP wire over stdio
    else:
        try:  # by name: the exporter is only in the otel extra, and typed checks run without it
            otlp = importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
        except ImportError as exc:
            raise ConfigError(
                "environment",
                "OTEL_TRACES_EXPORTER",
                "OTLP needs the otel extra: pip install 'mcp-gate[otel]'",
            ) from exc
        exporter = otlp.OTLPSpanExporter(endpoint=settings.endpoint)
    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider)
