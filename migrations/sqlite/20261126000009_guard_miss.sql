-- Kept in step with ../postgres/20261126000009_guard_miss.sql, which adds the
-- function a PostgreSQL change sent as one statement raises when its guards do
-- not hold. SQLite needs none: its changes run on the group-commit writer's
-- thread, where a statement is a function call, not a round trip.
SELECT 1;
