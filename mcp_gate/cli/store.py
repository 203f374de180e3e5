"""`mcp-gate store migrate` and `store copy`: a PostgreSQL database's schema, and an installation
moved from its SQLite file into one (through runtime.py)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mcp_gate.cli._common import EXIT_OK, add_config, load_config_from_args, progress, say, subcommand
from mcp_gate.errors import GateError

__all__ = ["add_commands"]

_COPY_HELP = """\
Copy an installation's SQLite store (DATA_DIR/gate.db: the evidence chain, checkpoints, approval
requests and votes, grants, pins, calls in flight, the Slack outbox and replay memory) into an
empty PostgreSQL database, in one transaction, then verify the chain there. The target is the
config's [store] unless --to names one; a target that holds anything already is refused.
Stop the gate first; afterwards point gate.toml's [store] at the database and keep data_dir
(its keys and signed-head file stay with the gate)."""


def cmd_store_migrate(args: argparse.Namespace) -> int:
    import anyio

    from mcp_gate import runtime

    config = load_config_from_args(args)
    before, after, known = anyio.run(lambda: runtime.migrate_store(config, apply=not args.check))
    where = runtime.store_where(config)
    if args.json:
        say(json.dumps({"store": where, "before": before, "version": after, "known": known}))
    elif args.check:
        say(f"{where}: schema version {after} (this gate knows {known})")
    elif before == after:
        say(f"{where}: schema version {after}, nothing to do")
    else:
        say(f"{where}: schema version {before} -> {after}")
    return EXIT_OK


def cmd_store_copy(args: argparse.Namespace) -> int:
    import anyio

    from mcp_gate import runtime
    from mcp_gate.bundle import Progress

    source = Path(args.source)
    url: str | None = args.to
    verifiers = None
    if url is None:
        config = load_config_from_args(args)
        if config.store is None:
            raise GateError(f"store copy: {config.path} has no [store] section; pass --to URL")
        url = config.store.url
        notary = runtime.gate_notary(config)
        verifiers = None if notary is None else [notary.key.verifier]
    bar: list[Progress] = []

    def advance(done: int, total: int) -> None:
        if not bar:
            bar.append(Progress("copying", total))
        bar[0].advance(done - bar[0].done)

    async def run() -> Any:
        return await runtime.copy_store(source, url, verifiers=verifiers, progress=advance)

    try:
        report = anyio.run(run)
    finally:
        if bar:
            bar[0].close()
    if args.json:
        say(json.dumps({"ok": True, **asdict(report)}))
    else:
        progress(f"copied and verified {report.records} record(s); head {report.head_hash[:16]}...")
        say(f"copied {source} into the database: {report.records} record(s), audit verify passed")
    return EXIT_OK


def add_commands(sub: Any) -> None:
    p = subcommand(sub, "store", "a PostgreSQL store: apply its schema, copy a SQLite installation into it")
    store_sub = p.add_subparsers(dest="store_command", metavar="SUBCOMMAND", required=True)
    m = subcommand(
        store_sub,
        "migrate",
        "apply the schema's missing migrations to the [store] database and report its version",
    )
    add_config(m)
    m.add_argument("--check", action="store_true", help="only report the version; change nothing")
    m.add_argument("--json", action="store_true", help="print the versions as JSON")
    m.set_defaults(func=cmd_store_migrate)
    c = store_sub.add_parser(
        "copy",
        help="copy a SQLite installation into an empty PostgreSQL database, then verify it",
        description=_COPY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config(c)
    c.add_argument("--from", dest="source", required=True, metavar="DATA_DIR", help="the gate's data_dir")
    c.add_argument(
        "--to",
        metavar="URL",
        help="the database (default: the config's [store]; a password here shows in ps)",
    )
    c.add_argument("--json", action="store_true", help="print the verification report as JSON")
    c.set_defaults(func=cmd_store_copy)
