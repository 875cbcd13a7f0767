-- Immutability: the history of every tag binding, and the pins that keep an
-- immutable tag's name from ever meaning another digest.
-- Kept in step with ../postgres/20261125000002_tag_history.sql.

-- Every binding decision of every tag, append-only. Not on the pull path.
CREATE TABLE tag_events (
    id               INTEGER PRIMARY KEY,
    repository_id    BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    tag              TEXT   NOT NULL,
    -- created | moved | repushed | denied | deleted
    action           TEXT   NOT NULL,
    -- the digest bound (created, moved, repushed), attempted (denied) or unbound (deleted)
    digest           TEXT   NOT NULL,
    -- the digest the tag held before (moved) or holds (denied)
    previous_digest  TEXT,
    -- the immutability rule that decided
    rule             TEXT   NOT NULL,
    actor            TEXT   NOT NULL,
    at               BIGINT NOT NULL
);
CREATE INDEX tag_events_tag ON tag_events(repository_id, tag, id);

-- The digest a tag was first bound to while immutable. Outlives the tag itself
-- (retention may remove the tag), so the name can only ever be re-bound to it.
CREATE TABLE tag_pins (
    repository_id  BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    tag            TEXT   NOT NULL,
    digest         TEXT   NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (repository_id, tag)
);
