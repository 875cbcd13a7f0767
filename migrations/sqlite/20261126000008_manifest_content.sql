-- The exact bytes of every manifest pushed from now on, by digest.
-- Kept in step with ../postgres/20261126000008_manifest_content.sql.
--
-- Written in the push's own transaction (on SQLite, in the writer's group
-- commit) instead of as one file per manifest: creating and fsyncing that file
-- was the largest cost of a manifest push. Manifests pushed before this
-- migration stay in the blob store, where reads still find them. Garbage
-- collection deletes a row with the manifest's `blobs` row.
CREATE TABLE manifest_content (
    digest  TEXT PRIMARY KEY,
    content BLOB NOT NULL
);
