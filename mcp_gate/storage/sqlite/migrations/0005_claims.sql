-- Leases on pieces of work that one gate of several sharing the store does: a mail, a notice, the
-- webhook's delivery. A lease that ran out is as good as none.
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS claims_by_until ON claims (until);
