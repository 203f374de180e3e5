"""The gate's Prometheus series, in a registry of its own per gate (never the process-global one).

Labels are bounded: a configured server name, a tier, an outcome, a channel or a reason, never a
request id, a token or an argument. Series that describe shared state (held requests, the
checkpoint) are set when scraped, from the store, by `health.py`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "OUTCOMES", "GateMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# How a call ended, as `mcp_gate_tool_calls_total{outcome}` counts it: ran straight away; ran
# after being held for approvers; ran after the person at the agent confirmed; denied (by an
# approver, a revocation or the person at the agent); expired unanswered; blocked by policy;
# failed (the downstream failed, or its definition changed before it ran); refused before any
# decision (unknown tool, bad arguments, too many pending); pending (told to call again later).
OUTCOMES = ("run", "held", "confirmed", "denied", "expired", "blocked", "failed", "refused", "pending")

# Gate overhead is milliseconds; a downstream call or a decision may take minutes.
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SLOW = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128)


class GateMetrics:
    """Every series one gate exposes, registered in `registry`."""

    def __init__(self, *, enabled: bool = True) -> None:
        # Off (`enabled=False`): the series exist but nothing is measured or counted, so the gate
        # pays nothing for them (benchmarks/overhead.py compares the two).
        self.enabled = enabled
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.calls = Counter(
            "mcp_gate_tool_calls", "Tool calls, by how they ended", ["server", "tier", "outcome"], registry=r
        )
        self.overhead = Histogram(
            "mcp_gate_call_overhead_seconds",
            "Time a call spent in the gate itself: not downstream, not waiting for a person",
            ["server"],
            buckets=_FAST,
            registry=r,
        )
        self.downstream_time = Histogram(
            "mcp_gate_downstream_call_seconds",
            "Time a call spent in its downstream server",
            ["server"],
            buckets=_SLOW,
            registry=r,
        )
        self.decision_time = Histogram(
            "mcp_gate_decision_seconds",
            "From an approval request to the decision that closed it",
            ["tier", "channel"],
            buckets=_SLOW,
            registry=r,
        )
        self.held_open = Gauge("mcp_gate_held_requests", "Approval requests open now", registry=r)
        self.oldest_held_age = Gauge(
            "mcp_gate_oldest_held_request_age_seconds", "Age of the oldest open approval request", registry=r
        )
        self.oldest_held_expires_in = Gauge(
            "mcp_gate_oldest_held_request_expires_in_seconds",
            "Seconds until the soonest-expiring open approval request expires (+Inf when none is open)",
            registry=r,
        )
        self.unattended = Gauge(
            "mcp_gate_unattended_held_requests",
            "Open approval requests whose every eligible approver is marked away (or that nobody may decide)",
            registry=r,
        )
        self.unattended_expires_in = Gauge(
            "mcp_gate_unattended_held_request_expires_in_seconds",
            "Seconds until the soonest-expiring unattended request expires (+Inf when none is unattended)",
            registry=r,
        )
        self.append_time = Histogram(
            "mcp_gate_evidence_append_seconds",
            "Time to commit one group-commit batch of evidence and state",
            buckets=_FAST,
            registry=r,
        )
        self.batch_size = Histogram(
            "mcp_gate_evidence_batch_size",
            "Writers committed together in one batch",
            buckets=_BATCH,
            registry=r,
        )
        self.write_failures = Counter(
            "mcp_gate_evidence_write_failures", "Writes to the store that failed", registry=r
        )
        self.checkpoint_age = Gauge(
            "mcp_gate_checkpoint_age_seconds",
            "Age of the newest signed checkpoint (absent when the gate signs none)",
            registry=r,
        )
        self.downstream_up = Gauge(
            "mcp_gate_downstream_up", "1 when a downstream server is connected", ["server"], registry=r
        )
        self.downstream_restarts = Counter(
            "mcp_gate_downstream_restarts",
            "Reconnections to a downstream server after its first connection",
            ["server"],
            registry=r,
        )
        self.channel_failures = Counter(
            "mcp_gate_channel_post_failures",
            "Posts to an approval channel that failed",
            ["channel"],
            registry=r,
        )
        self.channel_retries = Counter(
            "mcp_gate_channel_post_retries",
            "Posts to an approval channel tried again",
            ["channel"],
            registry=r,
        )
        self.refused_tokens = Counter(
            "mcp_gate_refused_tokens",
            "Requests refused for their bearer token, by listener and reason",
            ["listener", "reason"],
            registry=r,
        )
        self._restarts_seen: dict[str, int] = {}

    def call(self, server: str, tier: str, outcome: str) -> None:
        self.calls.labels(server, tier, outcome).inc()

    def committed(self, jobs: int, seconds: float, failed: int) -> None:
        """One group-commit batch: `jobs` writers, `failed` of them refused or lost."""
        self.append_time.observe(seconds)
        self.batch_size.observe(jobs)
        if failed:
            self.write_failures.inc(failed)

    def downstream(self, server: str, up: bool, connects: int) -> None:
        """A downstream's state as seen now; every connection after the first is a restart."""
        self.downstream_up.labels(server).set(1 if up else 0)
        restarts = max(0, connects - 1)
        seen = self._restarts_seen.get(server, 0)
        counter = self.downstream_restarts.labels(server)
        if restarts > seen:
            counter.inc(restarts - seen)
            self._restarts_seen[server] = restarts

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
