-- Accounts (users and robots), their roles per repository glob, and the keys
-- that sign access tokens.
-- Kept in step with ../postgres/20261125000006_accounts.sql.

-- A user or a robot. Secrets are stored only as argon2 PHC strings; a robot's
-- secret is generated, shown once and never stored in the clear.
CREATE TABLE accounts (
    id            INTEGER PRIMARY KEY,
    name          TEXT   NOT NULL UNIQUE,
    -- 'user' or 'robot'
    kind          TEXT   NOT NULL,
    secret_hash   TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    -- after this (Unix ms) the account can no longer log in; NULL: never
    expires_at    BIGINT,
    -- last successful login or token issue (Unix ms)
    last_used_at  BIGINT
);

-- What an account may do: a role over the repositories a glob matches.
CREATE TABLE account_roles (
    account_id    BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    repositories  TEXT   NOT NULL,
    -- 'reader', 'writer', 'admin' or 'auditor'
    role          TEXT   NOT NULL,
    PRIMARY KEY (account_id, repositories, role)
);

-- Token signing keys (Ed25519, PKCS#8). The newest key not retired signs; every
-- key not yet past retired_at + the token lifetime still verifies, so a
-- rotation never invalidates a live token.
CREATE TABLE signing_keys (
    kid           TEXT   PRIMARY KEY,
    algorithm     TEXT   NOT NULL,
    private_key   TEXT   NOT NULL,
    public_key    TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    retired_at    BIGINT
);
