-- Pull statistics: how often and when each manifest, tag and repository was
-- pulled. Counted in memory and added here in batches (an upsert adding the
-- counts), never written on a pull's request path.
-- Kept in step with ../postgres/20261125000003_pull_stats.sql.

-- Manifest GETs by digest (whether pulled by tag or by digest). No foreign key
-- to manifests: a batch may name a manifest deleted since, and the count of a
-- deleted manifest is harmless.
CREATE TABLE manifest_pulls (
    repository_id   BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest          TEXT   NOT NULL,
    pulls           BIGINT NOT NULL,
    last_pulled_at  BIGINT NOT NULL,
    PRIMARY KEY (repository_id, digest)
);

-- Manifest GETs by tag (only pulls that named the tag).
CREATE TABLE tag_pulls (
    repository_id   BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    tag             TEXT   NOT NULL,
    pulls           BIGINT NOT NULL,
    last_pulled_at  BIGINT NOT NULL,
    PRIMARY KEY (repository_id, tag)
);

-- Per-repository totals: manifest GETs, blob GETs and blob bytes sent.
CREATE TABLE repository_pulls (
    repository_id   BIGINT NOT NULL PRIMARY KEY REFERENCES repositories(id) ON DELETE CASCADE,
    pulls           BIGINT NOT NULL,
    blob_pulls      BIGINT NOT NULL,
    bytes_served    BIGINT NOT NULL,
    last_pulled_at  BIGINT NOT NULL
);
