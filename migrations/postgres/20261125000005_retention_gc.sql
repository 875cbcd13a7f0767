-- Promotions, legal holds, retention plans, and what garbage collection needs.
-- Kept in step with ../sqlite/20261125000005_retention_gc.sql.

-- Which digest was promoted (deployed) to which environment, append-only: the
-- current and previous K distinct digests per environment are rollback targets.
CREATE TABLE promotions (
    id             BIGSERIAL PRIMARY KEY,
    repository_id  BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    environment    TEXT   NOT NULL,
    digest         TEXT   NOT NULL,
    -- the tag it was promoted by, if any (resolved to digest at that moment)
    tag            TEXT,
    actor          TEXT   NOT NULL,
    at             BIGINT NOT NULL
);
CREATE INDEX promotions_env ON promotions(repository_id, environment, id);

-- Legal holds: an artifact under an active hold (released_at NULL) is beyond
-- the reach of every deletion path.
CREATE TABLE holds (
    id             BIGSERIAL PRIMARY KEY,
    repository_id  BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest         TEXT   NOT NULL,
    reason         TEXT   NOT NULL,
    actor          TEXT   NOT NULL,
    created_at     BIGINT NOT NULL,
    released_at    BIGINT,
    released_by    TEXT
);
CREATE INDEX holds_digest ON holds(repository_id, digest);

-- Plans shown to an operator, so that "apply <plan id>" does exactly what was shown.
CREATE TABLE retention_plans (
    id          TEXT   PRIMARY KEY,
    created_at  BIGINT NOT NULL,
    actor       TEXT   NOT NULL,
    plan        TEXT   NOT NULL,
    applied_at  BIGINT
);

-- Garbage collection: when a push last wrote or referenced a blob, and whether
-- a collection has claimed it (live | deleting). A blob is collected only when
-- nothing references it and touched_at is older than the grace period; pushes
-- touch the blobs they use in the transaction that makes them visible.
ALTER TABLE blobs ADD COLUMN touched_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE blobs ADD COLUMN state TEXT NOT NULL DEFAULT 'live';
-- Incremented by every touch: a collection claims a blob only if nothing
-- touched it since the collection looked (whatever the clocks say).
ALTER TABLE blobs ADD COLUMN touches BIGINT NOT NULL DEFAULT 0;
UPDATE blobs SET touched_at = created_at;
CREATE INDEX blobs_touched ON blobs(touched_at);
-- Collection asks "does any repository's manifest use these bytes as its own?"
CREATE INDEX manifests_digest ON manifests(digest);
