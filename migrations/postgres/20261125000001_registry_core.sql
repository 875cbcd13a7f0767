-- Registry core: repositories, content-addressed blobs, manifests, tags, uploads.
-- Kept in step with ../sqlite/20261125000001_registry_core.sql: same tables,
-- columns, keys and indexes; only the column types differ. Times are Unix
-- milliseconds (BIGINT) on both backends.

CREATE TABLE repositories (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT    COLLATE "C" NOT NULL UNIQUE,
    created_at  BIGINT  NOT NULL
);

-- Every object under blobs/ in the object store (layers, configs and manifest
-- bytes alike). A row exists only once the bytes are stored and verified.
CREATE TABLE blobs (
    digest      TEXT    PRIMARY KEY,
    size        BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL
);

-- Which repositories may serve a blob (pushed or mounted there).
CREATE TABLE repository_blobs (
    repository_id  BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest         TEXT   NOT NULL REFERENCES blobs(digest),
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX repository_blobs_digest ON repository_blobs(digest);

CREATE TABLE manifests (
    repository_id   BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest          TEXT   NOT NULL REFERENCES blobs(digest),
    media_type      TEXT   NOT NULL,
    artifact_type   TEXT,
    subject_digest  TEXT,
    size            BIGINT NOT NULL,
    annotations     TEXT,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX manifests_subject ON manifests(repository_id, subject_digest);

-- manifest -> blob references (config and layers): what retention and GC keep.
CREATE TABLE manifest_blobs (
    repository_id    BIGINT NOT NULL,
    manifest_digest  TEXT   NOT NULL,
    blob_digest      TEXT   NOT NULL,
    PRIMARY KEY (repository_id, manifest_digest, blob_digest),
    FOREIGN KEY (repository_id, manifest_digest)
        REFERENCES manifests(repository_id, digest) ON DELETE CASCADE
);
CREATE INDEX manifest_blobs_blob ON manifest_blobs(blob_digest);

-- index -> child manifest references.
CREATE TABLE manifest_children (
    repository_id  BIGINT NOT NULL,
    parent_digest  TEXT   NOT NULL,
    child_digest   TEXT   NOT NULL,
    PRIMARY KEY (repository_id, parent_digest, child_digest),
    FOREIGN KEY (repository_id, parent_digest)
        REFERENCES manifests(repository_id, digest) ON DELETE CASCADE
);
CREATE INDEX manifest_children_child ON manifest_children(repository_id, child_digest);

-- One row per tag: the primary key is what makes a tag name unique per repository.
CREATE TABLE tags (
    repository_id    BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    name             TEXT   COLLATE "C" NOT NULL,
    manifest_digest  TEXT   NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (repository_id, name),
    FOREIGN KEY (repository_id, manifest_digest) REFERENCES manifests(repository_id, digest)
);
CREATE INDEX tags_manifest ON tags(repository_id, manifest_digest);

-- Upload sessions live here, not in a process, so any replica can take the next chunk.
CREATE TABLE uploads (
    id             TEXT   PRIMARY KEY,
    repository_id  BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    algorithm      TEXT   NOT NULL,
    hash_state     BYTEA  NOT NULL,
    size           BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX uploads_updated ON uploads(updated_at);

-- Chunks received for an upload, one object each, ordered by their offset.
CREATE TABLE upload_parts (
    upload_id     TEXT   NOT NULL REFERENCES uploads(id) ON DELETE CASCADE,
    start_offset  BIGINT NOT NULL,
    object_key    TEXT   NOT NULL,
    size          BIGINT NOT NULL,
    PRIMARY KEY (upload_id, start_offset)
);
