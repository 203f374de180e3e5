-- The schema as first shipped, and the tables and indexes added before migrations were numbered
-- (each IF NOT EXISTS, so a file from then gets what it lacks).
CREATE TABLE IF NOT EXISTS evidence (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    ts TEXT NOT NULL,
    event_type TEXT NOT NULL,
    correlation_id TEXT,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS evidence_by_correlation ON evidence(correlation_id);
-- An approver looking at a request sees the requester's last calls: found through this index, so
-- the cost of showing (and of every Slack render) does not grow with the log. Only valid JSON is
-- indexed: a tampered body must still open, so that verification can say where it was changed.
CREATE INDEX IF NOT EXISTS evidence_calls_by_agent
    ON evidence(json_extract(body, '$.requester.agent'), seq)
    WHERE event_type = 'call.requested' AND json_valid(body);
CREATE TRIGGER IF NOT EXISTS evidence_no_update BEFORE UPDATE ON evidence
BEGIN SELECT RAISE(ABORT, 'evidence is append-only'); END;
CREATE TRIGGER IF NOT EXISTS evidence_no_delete BEFORE DELETE ON evidence
BEGIN SELECT RAISE(ABORT, 'evidence is append-only'); END;
CREATE TABLE IF NOT EXISTS pins (
    server TEXT NOT NULL,
    tool TEXT NOT NULL,
    pin TEXT NOT NULL,
    definition TEXT NOT NULL,
    drifted_pin TEXT,
    drifted_definition TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (server, tool)
);
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    correlation_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    owner TEXT NOT NULL,
    server TEXT NOT NULL,
    tool TEXT NOT NULL,
    pin TEXT NOT NULL,
    args_sha256 TEXT NOT NULL,
    policy_sha256 TEXT NOT NULL,
    tier TEXT NOT NULL,
    required INTEGER NOT NULL,
    groups TEXT NOT NULL,
    rule TEXT NOT NULL,
    reason TEXT NOT NULL,
    args TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    state TEXT NOT NULL,
    closed_by TEXT,
    reported INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS approvals_by_call ON approvals(agent, server, tool, args_sha256, state);
CREATE INDEX IF NOT EXISTS approvals_by_state ON approvals(state, expires_at);
CREATE TABLE IF NOT EXISTS votes (
    request_id TEXT NOT NULL REFERENCES approvals(id),
    approver TEXT NOT NULL,
    verdict TEXT NOT NULL,
    channel TEXT NOT NULL,
    at TEXT NOT NULL,
    note TEXT,
    PRIMARY KEY (request_id, approver)
);
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    owner TEXT NOT NULL,
    server TEXT NOT NULL,
    tool TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    request_id TEXT,
    note TEXT,
    revoked_at TEXT,
    revoked_by TEXT
);
CREATE INDEX IF NOT EXISTS grants_by_tool ON grants(agent, server, tool);
CREATE TABLE IF NOT EXISTS inflight (
    correlation_id TEXT PRIMARY KEY,
    request_id TEXT,
    started_at TEXT NOT NULL,
    fields TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS elicitation_nonces (
    nonce TEXT PRIMARY KEY,
    correlation_id TEXT NOT NULL,
    used_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY,
    size INTEGER NOT NULL,
    kind TEXT NOT NULL,
    created_at TEXT NOT NULL,
    note TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TABLE IF NOT EXISTS slack_messages (
    request_id TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    ts TEXT,
    rendered_sha256 TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    lease_until TEXT,
    last_error TEXT,
    voters TEXT NOT NULL DEFAULT '{}',
    done INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS slack_seen (
    key TEXT PRIMARY KEY,
    seen_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS slack_seen_by_time ON slack_seen(seen_at);
