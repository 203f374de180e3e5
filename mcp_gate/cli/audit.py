"""The evidence commands: keys init/show, audit verify (checkpoints, bundles), show, export, report, prune."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp_gate.approvals import ApprovalRequest
from mcp_gate.checkpoints import (
    VerifierKey,
    checkpoint_body,
    open_note,
    parse_checkpoint,
    sign_note,
    split_notes,
)
from mcp_gate.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    add_config,
    load_config_from_args,
    progress,
    say,
    subcommand,
)
from mcp_gate.clock import SystemClock, utc_iso
from mcp_gate.errors import CheckpointError, GateError, StoreError
from mcp_gate.events import EventType
from mcp_gate.evidence import GENESIS_HASH, new_event, render_story

if TYPE_CHECKING:
    from mcp_gate.audit import AuditReport
    from mcp_gate.config import GateConfig
    from mcp_gate.notary import Notary
    from mcp_gate.storage.base import Tx

__all__ = [
    "add_audit_commands",
    "add_key_commands",
    "checkpoint_warnings",
    "cmd_verify",
    "missed_copies",
    "parse_moment",
]


def _db(config: GateConfig) -> str:
    """Where the gate's evidence is (its file, or its database's url without the password);
    GateError if there is no file yet."""
    from mcp_gate import runtime

    where = runtime.store_where(config)
    if not runtime.store_exists(config):
        raise GateError(f"{where}: no evidence log here yet (has the gate run with this config?)")
    return where


def _event(config: GateConfig, event_type: EventType, **fields: Any) -> dict[str, Any]:
    from mcp_gate import __version__
    from mcp_gate.config import invoking_user

    return new_event(
        event_type,
        ts=utc_iso(SystemClock().now()),
        correlation_id=None,
        gate={"name": config.name, "version": __version__},
        by=invoking_user(),
        **fields,
    )


async def _record(config: GateConfig, notary: Notary | None, event: dict[str, Any]) -> None:
    """Record an audit action in the log, in its own short write after the read-only work.

    Only a gate with a signing key records them (then a checkpoint covers them too); a read-only
    copy of the file is left as it is."""
    from mcp_gate import runtime

    if notary is None or not runtime.store_writable(config):
        return
    try:
        async with runtime.open_gate_store(config) as store:
            await store.append([event])
    except StoreError as exc:
        progress(f"mcp-gate: could not record {event['event_type']}: {exc}")


def parse_moment(text: str, option: str) -> str:
    """A --since / --until value (a date, or a date and time; UTC unless it says otherwise) as the
    log's timestamp text."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise GateError(
            f"{option}: expected a date like 2026-11-01 or 2026-11-01T12:00:00Z, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return utc_iso(moment)


def _pubkey(text: str) -> VerifierKey:
    path = Path(text)
    value = text
    if "+" not in text or path.is_file():
        try:
            value = path.read_text("utf-8").strip()
        except OSError as exc:
            raise GateError(
                f"--pubkey {text}: not a public key and not a readable file ({exc.strerror})"
            ) from None
    try:
        return VerifierKey.from_text(value)
    except CheckpointError as exc:
        raise GateError(f"--pubkey: {exc}") from None


# -- keys -----------------------------------------------------------------------------------


def cmd_keys_init(args: argparse.Namespace) -> int:
    from mcp_gate.notary import create_key_file, head_path, write_head

    config = load_config_from_args(args)
    settings = config.evidence
    assert settings is not None
    if settings.signer is not None:
        raise GateError(
            f"{config.path}: evidence.signer: this gate signs with a separate signer and holds no key; "
            "keys init is not needed"
        )
    key = create_key_file(settings.key_path, settings.key_name)
    # The signed head starts at size 0: from now on a missing head file is itself a finding.
    body = checkpoint_body(settings.origin, 0, GENESIS_HASH, time=utc_iso(SystemClock().now()))
    write_head(head_path(settings.key_path), sign_note(body, key))
    progress(f"signing key written to {settings.key_path} (mode 0600); checkpoints are now on")
    say(key.verifier.to_text())
    return EXIT_OK


def cmd_keys_show(args: argparse.Namespace) -> int:
    from mcp_gate.notary import load_key_file

    config = load_config_from_args(args)
    assert config.evidence is not None
    if config.evidence.signer_pubkey is not None:
        say(config.evidence.signer_pubkey)
        return EXIT_OK
    say(load_key_file(config.evidence.key_path).verifier.to_text())
    return EXIT_OK


# -- audit show -----------------------------------------------------------------------------


def _get_request(tx: Tx, request_id: str) -> ApprovalRequest | None:
    return tx.get_request(request_id)


def cmd_show(args: argparse.Namespace) -> int:
    import anyio.to_thread

    from mcp_gate import runtime

    config = load_config_from_args(args)
    _db(config)

    async def show() -> int:
        async with runtime.read_gate_store(config) as store:
            records = await store.records(correlation_id=args.correlation_id)
            # A call that joined an approval request made by an earlier identical call: its
            # story includes that request's records (who was asked, who decided).
            linked = {r.body["request_id"] for r in records if isinstance(r.body.get("request_id"), str)}
            for request_id in sorted(linked):
                request = await store.read(functools.partial(_get_request, request_id=request_id))
                if request is not None and request.correlation_id != args.correlation_id:
                    records += await store.records(correlation_id=request.correlation_id)
        records = sorted({r.seq: r for r in records}.values(), key=lambda r: r.seq)
        if not records:
            raise GateError(f"audit show: no records with correlation id {args.correlation_id!r}")
        if args.json:
            say(json.dumps([dict(r.body) for r in records], indent=2))
        else:
            say(render_story(records))
        return EXIT_OK

    return anyio.run(show)


# -- audit verify ---------------------------------------------------------------------------


def _verification_inputs(
    config: GateConfig, pubkey: str | None, checkpoint_files: list[str] | None
) -> tuple[Notary | None, list[VerifierKey] | None, list[tuple[str, str]]]:
    """The gate's notary (to record the check), the keys to trust, and the checkpoint copies to check.

    With --pubkey nothing private is needed: a missing or unusable signing key only means the
    check cannot be recorded in the log."""
    from mcp_gate import runtime

    notary: Notary | None
    if pubkey is not None:
        verifiers: list[VerifierKey] | None = [_pubkey(pubkey)]
        try:
            notary = runtime.gate_notary(config)
        except GateError as exc:
            progress(f"mcp-gate: not recording this check in the log ({exc})")
            notary = None
    else:
        notary = runtime.gate_notary(config)
        verifiers = None if notary is None else [notary.key.verifier]
    extra: list[tuple[str, str]] = []
    sources = [Path(p) for p in checkpoint_files or ()]
    sink = None if config.evidence is None else config.evidence.copy_to_file
    if sink is not None and sink.exists() and sink not in sources:
        sources.append(sink)
    for source in sources:
        try:
            text = source.read_text("utf-8")
        except OSError as exc:
            raise GateError(f"--checkpoints {source}: cannot be read ({exc.strerror})") from None
        extra.extend((f"{source} note {i}", note) for i, note in enumerate(split_notes(text), start=1))
    if extra and verifiers is None:
        raise GateError("--checkpoints: checking signed checkpoints needs --pubkey (or the gate's key)")
    return notary, verifiers, extra


def cmd_verify(args: argparse.Namespace) -> int:
    import anyio.to_thread

    from mcp_gate import runtime
    from mcp_gate.bundle import Progress

    if args.bundle is not None:
        return _verify_bundle(args)
    config = load_config_from_args(args)
    db = _db(config)
    notary, verifiers, extra = _verification_inputs(config, args.pubkey, args.checkpoints)
    if args.pubkey is None and verifiers is not None:
        assert config.evidence is not None
        where = (
            "the separate signer's configured public key"
            if config.evidence.signer
            else (f"the public key of the local signing key {config.evidence.key_path}")
        )
        progress(
            f"note: trusting {where}; whoever can change this host can change it too: pass --pubkey "
            "with a copy kept elsewhere"
        )
    head_text = _head_text(config, verifiers)
    if head_text is not None:
        extra = [*extra, head_text]

    async def run() -> int:
        progress(f"verifying {db}...")
        bar: list[Progress] = []

        def advance(done: int, total: int) -> None:
            if not bar:
                bar.append(Progress("verifying", total))
            bar[0].advance(done - bar[0].done)

        report = await runtime.verify_gate_store(
            config, verifiers=verifiers, extra_notes=extra, progress=advance
        )
        if bar:
            bar[0].close()
        report = _check_history(config, verifiers, report)
        if args.json:
            say(json.dumps(asdict(report)))
        elif report.ok:
            line = f"ok: {report.records} records, chain intact, head {report.head_hash[:16]}"
            if report.keys_checked and report.checkpoints:
                line += (
                    f"; {report.checkpoints} signed checkpoint(s) verified, covering seq 1..{report.covered}"
                )
            elif report.keys_checked:
                line += "; no signed checkpoint yet (the gate writes one when it next runs or exports)"
            else:
                line += "; signed checkpoints not checked (no key: run `mcp-gate keys init` or pass --pubkey)"
            if report.pruned_through:
                line += f"; seq 1..{report.pruned_through} pruned under a signed retention checkpoint"
            say(line)
        else:
            say(f"TAMPERED: {report.problem}")
        await _record(
            config,
            notary,
            _event(
                config,
                "audit.verified",
                kind="log",
                ok=report.ok,
                records=report.records,
                first_bad_seq=report.first_bad_seq,
                checkpoints=report.checkpoints,
            ),
        )
        return EXIT_OK if report.ok else EXIT_FAILED

    return anyio.run(run)


def _head_text(config: GateConfig, verifiers: list[VerifierKey] | None) -> tuple[str, str] | None:
    """The signed-head file as a (source, note) pair, so verify checks the log against it too."""
    from mcp_gate.notary import head_path, read_head_text

    if verifiers is None or config.evidence is None:
        return None
    path = head_path(config.evidence.key_path)
    text = read_head_text(path)
    if text is None:
        return None
    try:
        if _note_size(text, verifiers) == 0:
            return None  # the head `keys init` starts with covers nothing
    except CheckpointError:
        pass  # checked with the others, and reported as not valid
    return (str(path), text)


def _check_history(
    config: GateConfig, verifiers: list[VerifierKey] | None, report: AuditReport
) -> AuditReport:
    """With a key, the checkpoint table must reach the signed head, and the key must be the one the
    log pinned; otherwise the report fails with the reason."""
    from mcp_gate import runtime
    from mcp_gate.notary import head_path

    if verifiers is None or config.evidence is None or not report.ok:
        return report
    settings = config.evidence
    path = head_path(settings.key_path)
    key_here = settings.signer is not None or settings.key_path.exists()
    with runtime.open_log_reader(config) as reader:
        stored = reader.notes()
        pinned = next(
            (b["signing_key"] for b in reader.bodies_of("gate.started") if b.get("signing_key")), None
        )
    table_max = 0
    for _size, _kind, note in stored:
        try:
            table_max = max(table_max, _note_size(note, verifiers))
        except CheckpointError:
            continue  # already a finding of verify_file
    problem: str | None = None
    if pinned is not None and all(pinned != v.to_text() for v in verifiers):
        problem = (
            f"the key checked ({verifiers[0].key_id}) is not the key the log pinned at its first start "
            f"({str(pinned).split('+')[1] if '+' in str(pinned) else '?'}): was the key swapped?"
        )
    elif path.exists():
        try:
            head_size = _note_size(path.read_text("utf-8"), verifiers)
        except (CheckpointError, OSError) as exc:
            head_size, problem = 0, f"{path}: the signed head cannot be checked: {exc}"
        if table_max < head_size:
            problem = (
                f"the stored checkpoints end at size {table_max} but {path} holds a signed checkpoint "
                f"of {head_size} records: checkpoint history deleted"
            )
    elif key_here:
        problem = (
            f"a signing key exists but its signed-head file {path} is missing "
            "(checkpoint history deleted?); see docs/controls.md"
        )
    if problem is None:
        return report
    return replace(report, ok=False, problem=problem, first_bad_seq=report.first_bad_seq or 1)


def _note_size(note: str, verifiers: list[VerifierKey]) -> int:
    body, _ = open_note(note, verifiers)
    return parse_checkpoint(body).size


def _verify_bundle(args: argparse.Namespace) -> int:
    import anyio.to_thread

    from mcp_gate.bundle import verify_bundle
    from mcp_gate.config import load_config, resolve_config_path

    if args.pubkey is None:
        raise GateError("--bundle: verifying a bundle needs the gate's public key: --pubkey KEY")
    key = _pubkey(args.pubkey)
    report = verify_bundle(Path(args.bundle), key)
    if args.json:
        say(json.dumps(asdict(report)))
    elif report.ok:
        say(
            f"ok: bundle {args.bundle}: {report.records} records "
            f"(seq {report.first_seq}..{report.last_seq}), "
            f"signature and every file hash verified, {report.checkpoints} signed checkpoint(s)"
        )
    else:
        say(f"TAMPERED: bundle {args.bundle}: {report.problem}")
    config_path = resolve_config_path(args.config, os.environ, Path.cwd())
    if config_path.exists():  # on the gate's own host the check is recorded; an auditor needs no gate
        try:
            config = load_config(config_path, os.environ)
            notary, _, _ = _verification_inputs(config, args.pubkey, None)
        except GateError as exc:  # the verdict stands; only its record is missing
            progress(f"mcp-gate: not recording this check in the log ({exc})")
            return EXIT_OK if report.ok else EXIT_FAILED
        event = _event(
            config,
            "audit.verified",
            kind="bundle",
            bundle=str(Path(args.bundle).absolute()),
            ok=report.ok,
            records=report.records,
            first_seq=report.first_seq,
            last_seq=report.last_seq,
            problem=report.problem,
            checkpoints=report.checkpoints,
        )
        anyio.run(_record, config, notary, event)
    return EXIT_OK if report.ok else EXIT_FAILED


# -- audit export / report / prune ----------------------------------------------------------


def _needs_notary(config: GateConfig, what: str) -> Notary:
    from mcp_gate import runtime

    notary = runtime.gate_notary(config)
    if notary is None:
        raise GateError(f"{what} needs a signing key; create one with `mcp-gate keys init`")
    return notary


def cmd_export(args: argparse.Namespace) -> int:
    import anyio.to_thread

    from mcp_gate import __version__, runtime
    from mcp_gate.bundle import export_bundle

    config = load_config_from_args(args)
    _db(config)
    notary = _needs_notary(config, "audit export")
    since = None if args.since is None else parse_moment(args.since, "--since")
    until = None if args.until is None else parse_moment(args.until, "--until")
    out = Path(args.out)
    if out.exists():
        raise GateError(f"--out {out}: already exists; choose a new path")

    async def run() -> int:
        async with runtime.open_gate_store(config) as store:
            await store.checkpoint()  # a checkpoint before every export covers its tail

        def write() -> Any:
            with runtime.open_log_reader(config) as reader:
                gate = {"name": config.name, "version": __version__, "config_sha256": config.config_sha256}
                return export_bundle(reader, notary.key, out, since=since, until=until, gate=gate)

        result = await anyio.to_thread.run_sync(write)
        await _record(
            config,
            notary,
            _event(
                config,
                "audit.exported",
                since=since,
                until=until,
                first_seq=result.first_seq,
                last_seq=result.last_seq,
                count=result.count,
                sums_sha256=result.sums_sha256,
            ),
        )
        say(f"exported {result.count} records (seq {result.first_seq}..{result.last_seq}) to {out}")
        say(f"verify with: mcp-gate audit verify --bundle {out} --pubkey '{notary.key.verifier.to_text()}'")
        return EXIT_OK

    return anyio.run(run)


def cmd_report(args: argparse.Namespace) -> int:
    import anyio.to_thread

    from mcp_gate import runtime
    from mcp_gate.report import build_report, render_html

    config = load_config_from_args(args)
    _db(config)
    notary, verifiers, extra = _verification_inputs(config, args.pubkey, args.checkpoints)
    since = None if args.since is None else parse_moment(args.since, "--since")
    until = None if args.until is None else parse_moment(args.until, "--until")

    async def run() -> int:
        verified = await runtime.verify_gate_store(config, verifiers=verifiers, extra_notes=extra)

        def build() -> dict[str, Any]:
            with runtime.open_log_reader(config) as reader:
                return build_report(reader, since=since, until=until, gate=config.name, verified=verified)

        report = await anyio.to_thread.run_sync(build)
        text = json.dumps(report, indent=2) if args.format == "json" else render_html(report)
        if args.out is None or args.out == "-":
            sys.stdout.write(text + ("\n" if not text.endswith("\n") else ""))
        else:
            await anyio.to_thread.run_sync(Path(args.out).write_text, text, "utf-8")
            progress(f"report written to {args.out}")
        violations = report["unapproved_calls"]["count"]
        await _record(
            config,
            notary,
            _event(config, "audit.reported", since=since, until=until, violations=violations),
        )
        return EXIT_OK if violations == 0 and verified.ok else EXIT_FAILED

    return anyio.run(run)


def cmd_prune(args: argparse.Namespace) -> int:
    import anyio.to_thread

    from mcp_gate import runtime

    config = load_config_from_args(args)
    _db(config)
    _needs_notary(config, "audit prune")
    retention = None if config.evidence is None else config.evidence.retention_seconds
    if retention is None:
        raise GateError(f"{config.path}: evidence.retention: not set; pruning keeps everything")
    before = utc_iso(SystemClock().now() - timedelta(seconds=retention))

    def events(pruned: Any) -> list[dict[str, Any]]:
        return [
            _event(
                config,
                "evidence.pruned",
                first_seq=pruned.first,
                last_seq=pruned.last,
                count=pruned.count,
                root=pruned.root,
                before=before,
            )
        ]

    async def run() -> int:
        async with runtime.open_gate_store(config) as store:
            pruned = await store.prune(before, events=events)
        if pruned is None:
            say(f"nothing to prune: no record is older than {before}")
        else:
            say(
                f"pruned seq {pruned.first}..{pruned.last} ({pruned.count} records older than {before}) "
                "under a signed retention checkpoint"
            )
        return EXIT_OK

    return anyio.run(run)


def missed_copies(config: GateConfig) -> list[str]:
    """One line per checkpoint copy that failed (for `mcp-gate check`)."""
    from mcp_gate import runtime

    if not runtime.store_exists(config):
        return []
    lines: list[str] = []
    with runtime.open_log_reader(config) as reader:
        for body in reader.bodies_of("checkpoint.copy_failed"):
            for failure in body.get("failed", []):
                lines.append(f"checkpoint of size {body.get('size')} at {body.get('ts')}: {failure}")
    return lines


def checkpoint_warnings(config: GateConfig) -> list[str]:
    """Warnings for `mcp-gate check`: checkpoints are signed but no copy of them leaves this host."""
    settings = config.evidence
    if settings is None or (settings.signer is None and not settings.key_path.exists()):
        return []
    if settings.copy_to_file is not None or settings.webhook_url is not None:
        return []
    return [
        "WARNING: signed checkpoints are kept on this machine only, so whoever controls it can rewrite "
        "the log and its checkpoints alike; send a copy elsewhere with [evidence] webhook_url_env (or "
        "copy_to_file on storage the operator cannot rewrite), see docs/controls.md"
    ]


# -- parser ---------------------------------------------------------------------------------


def add_key_commands(sub: Any) -> None:
    p = subcommand(sub, "keys", "manage the key that signs evidence checkpoints")
    keys_sub = p.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)
    k = subcommand(
        keys_sub,
        "init",
        "create the Ed25519 signing key and print its public key",
        "Create the Ed25519 key that signs checkpoints of the evidence log (a file in the data dir, mode "
        "0600, or [evidence] key) and print its public key for auditors. Never overwrites a key.",
    )
    add_config(k)
    k.set_defaults(func=cmd_keys_init)
    k = subcommand(keys_sub, "show", "print the public key of the signing key")
    add_config(k)
    k.set_defaults(func=cmd_keys_show)


def add_audit_commands(sub: Any) -> None:
    """Register `audit` and its sub-commands verify, show, export, report and prune."""
    p = subcommand(
        sub, "audit", "verify, export, report on and prune the evidence log; show one call's story"
    )
    audit_sub = p.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)
    v = subcommand(
        audit_sub,
        "verify",
        "check the hash chain, gapless sequence and signed checkpoints (exit 1 if tampered)",
        "Check the evidence log's hash chain and gapless sequence, and every signed checkpoint (with "
        "the gate's key or --pubkey). Exits 1 and names the first bad record if anything was edited, "
        "deleted, inserted, reordered, truncated or rewritten. With --bundle, verify an export bundle.",
    )
    add_config(v)
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_verify_options(v)
    s = subcommand(
        audit_sub,
        "show",
        "print every record of one call",
        "Print every record of one call: requested, decided, executed / failed / refused.",
    )
    add_config(s)
    s.add_argument(
        "correlation_id",
        metavar="CORRELATION_ID",
        help="the call's id, from a refused call's error result or `audit show --json`",
    )
    s.add_argument("--json", action="store_true", help="print the records as JSON")
    s.set_defaults(func=cmd_show)

    e = subcommand(
        audit_sub,
        "export",
        "write an evidence bundle an auditor verifies offline",
        "Write the records of a period, the signed checkpoints covering them, the public key, a manifest "
        "and signed SHA256SUMS to a directory or a .tar.gz. A checkpoint is signed first.",
    )
    add_config(e)
    e.add_argument("--since", metavar="DATE", help="first moment (inclusive), e.g. 2026-11-01")
    e.add_argument("--until", metavar="DATE", help="last moment (exclusive), e.g. 2026-12-01")
    e.add_argument("--out", metavar="PATH", required=True, help="a new directory, or a file ending .tar.gz")
    e.set_defaults(func=cmd_export)
    r = subcommand(
        audit_sub,
        "report",
        "write the evidence report (self-contained HTML, or JSON)",
        "Write one self-contained HTML page (or JSON) about a period: calls by server and tier, every "
        "approval, denials, expiries, grants, refused self-approvals, tool drift, calls that ran without "
        "a required approval, and the verification result. Exits 1 if any such call or tampering is found.",
    )
    add_config(r)
    r.add_argument("--since", metavar="DATE", help="first moment (inclusive)")
    r.add_argument("--until", metavar="DATE", help="last moment (exclusive)")
    r.add_argument("--out", metavar="PATH", help="where to write it (default: stdout)")
    r.add_argument("--format", choices=("html", "json"), default="html", help="html (default) or json")
    _add_trust_options(r)
    r.set_defaults(func=cmd_report)
    p = subcommand(
        audit_sub,
        "prune",
        "remove records older than [evidence] retention, under a signed retention checkpoint",
        "Remove records older than [evidence] retention. A signed retention checkpoint records the "
        "range, count and chain head of what was removed, so `audit verify` still passes.",
    )
    add_config(p)
    p.set_defaults(func=cmd_prune)


def _add_trust_options(v: argparse.ArgumentParser) -> None:
    v.add_argument(
        "--pubkey",
        metavar="KEY",
        help="trust this public key (NAME+HASH+BASE64, or a file holding it); no private key is needed",
    )
    v.add_argument(
        "--checkpoints",
        metavar="FILE",
        action="append",
        help="also check the signed checkpoints in FILE (a copy kept elsewhere); repeatable",
    )


def _add_verify_options(v: argparse.ArgumentParser) -> None:
    _add_trust_options(v)
    v.add_argument("--bundle", metavar="PATH", help="verify an export bundle (directory or .tar.gz) instead")
    v.set_defaults(func=cmd_verify)
