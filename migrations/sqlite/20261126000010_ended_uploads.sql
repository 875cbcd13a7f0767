-- Upload sessions that ended (finished or cancelled) while their id could still
-- be used. A session is opened without a row (its id carries its opening time
-- and hash algorithm, `SessionId` in src/domain/session.rs) and gets an `uploads`
-- row only with its first chunk; this row is what stops the id from being used
-- again once it ended. Inserting it is how a session ends, so of two requests
-- ending one session exactly one succeeds. Ids sort by opening time, so the
-- upload janitor deletes, by key range, the rows of ids that have expired anyway.
-- Kept in step with ../postgres/20261126000010_ended_uploads.sql.
CREATE TABLE ended_uploads (
    id  TEXT PRIMARY KEY
);
