-- Audit entries committed with the change they record, not yet chained.
-- Kept in step with ../postgres/20261125000007_audit_pending.sql.
--
-- Appending to the chain needs the head's hash, so chaining inside every change's
-- transaction made all writers queue on the head row. Changes now insert here,
-- which takes no shared lock, and the sealer moves rows into audit_log (ids
-- without gaps, hashed onto the head) in one short transaction per batch.
-- Readers of the trail seal first, so they never miss a committed entry.
CREATE TABLE audit_pending (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT NOT NULL,
    actor       TEXT   NOT NULL,
    client      TEXT,
    action      TEXT   NOT NULL,
    repository  TEXT,
    tag         TEXT,
    digest      TEXT,
    result      TEXT   NOT NULL,
    detail      TEXT,
    request_id  TEXT,
    user_agent  TEXT
);
