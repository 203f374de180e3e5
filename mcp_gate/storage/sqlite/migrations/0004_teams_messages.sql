-- The Teams card of each approval request: conversation id (channel), activity id (ts), retries.
CREATE TABLE IF NOT EXISTS teams_messages (
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
