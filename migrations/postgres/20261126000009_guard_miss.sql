-- Raised by a change sent as one statement (`OneStatement` in
-- src/metadata/exec.rs) when the common case it was written for does not hold:
-- the statement, and so everything it wrote, is rolled back, and the caller
-- runs its general transaction instead. VOLATILE (the default), so the planner
-- never evaluates it ahead of the rows it is guarding.
-- Kept in step with ../sqlite/20261126000009_guard_miss.sql.
CREATE FUNCTION cairn_guard_miss() RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a guarded change did not apply; running the general transaction'
        USING ERRCODE = 'CA001';
END
$$;
