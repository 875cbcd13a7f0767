-- The audit trail and the provenance store.
-- Kept in step with ../postgres/20261125000004_audit_provenance.sql.

-- Everything that happened, append-only and hash-chained: each row's hash covers
-- its fields and the previous row's hash, ids have no gaps, and audit_head holds
-- the last id and hash so that a removed tail is detected too.
CREATE TABLE audit_log (
    id          BIGINT PRIMARY KEY,
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
    user_agent  TEXT,
    prev_hash   TEXT   NOT NULL,
    hash        TEXT   NOT NULL
);
CREATE INDEX audit_log_repository ON audit_log(repository, id);
CREATE INDEX audit_log_digest ON audit_log(digest, id);
CREATE INDEX audit_log_actor ON audit_log(actor, id);
CREATE INDEX audit_log_action ON audit_log(action, id);
CREATE INDEX audit_log_at ON audit_log(at);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

-- The chain's head. Appending updates this one row first, which serializes
-- appenders (a row lock on PostgreSQL, the single writer on SQLite).
CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   BIGINT  NOT NULL,
    hash  TEXT    NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Build provenance per manifest digest, one row per statement (or label set),
-- with the source it came from: api | attestation | labels.
CREATE TABLE provenance (
    id               INTEGER PRIMARY KEY,
    repository_id    BIGINT  NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    subject_digest   TEXT    NOT NULL,
    source           TEXT    NOT NULL,
    -- the attestation manifest or layer it was read from (attestation), else NULL
    source_digest    TEXT,
    -- sha256 of the stored document: the same statement is stored once
    document_digest  TEXT    NOT NULL,
    parsed           BOOLEAN NOT NULL,
    parse_error      TEXT,
    statement_type   TEXT,
    predicate_type   TEXT,
    source_uri       TEXT,
    revision         TEXT,
    builder_id       TEXT,
    build_type       TEXT,
    invocation_id    TEXT,
    started_at       BIGINT,
    finished_at      BIGINT,
    image_created_at BIGINT,
    version          TEXT,
    authors          TEXT,
    document         TEXT,
    actor            TEXT    NOT NULL,
    recorded_at      BIGINT  NOT NULL,
    UNIQUE (repository_id, subject_digest, source, document_digest)
);
CREATE INDEX provenance_subject ON provenance(subject_digest);
CREATE INDEX provenance_revision ON provenance(revision);
CREATE INDEX provenance_source_uri ON provenance(source_uri);
CREATE INDEX provenance_builder ON provenance(builder_id);
CREATE INDEX provenance_started ON provenance(started_at);

CREATE TABLE provenance_materials (
    provenance_id  BIGINT NOT NULL REFERENCES provenance(id) ON DELETE CASCADE,
    position       INTEGER NOT NULL,
    uri            TEXT   NOT NULL,
    digest         TEXT,
    PRIMARY KEY (provenance_id, position)
);
CREATE INDEX provenance_materials_digest ON provenance_materials(digest);
