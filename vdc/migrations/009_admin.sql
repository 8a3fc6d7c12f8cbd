-- Cluster-wide admin state (docs/design.md §17): every vDC on this database accepts
-- the same admin token and counts the same failed web UI logins, so neither a
-- rotation nor a password-guessing budget depends on which vDC a request reaches.

-- The admin token's SHA-256 digest, never the token. One row: the first vDC to start
-- stores its configured (or generated) token; later starts never overwrite it, and
-- only a rotation (POST /api/v1/admin-token/rotate) replaces it.
CREATE TABLE admin_token (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    hash        bytea NOT NULL CHECK (length(hash) = 32),
    -- 1 for the bootstrap, +1 per rotation: vDC logs and the API name it.
    generation  bigint NOT NULL DEFAULT 1,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Web UI login attempts per client address (vdc/web's throttle). One statement
-- checks the lockout and counts the attempt before the token is compared, so parallel
-- guesses through several vDCs get no more tries than sequential ones through one. A
-- success deletes the row; a row quiet for the throttle's forget time is deleted with
-- the expired sessions.
CREATE TABLE ui_login_attempts (
    client       text PRIMARY KEY,
    -- attempts since the last success (or since the client was forgotten)
    attempts     integer NOT NULL,
    last_attempt timestamptz NOT NULL,
    -- no attempt from client is counted or checked before this (429, Retry-After)
    locked_until timestamptz NOT NULL
);
CREATE INDEX ui_login_attempts_last_attempt ON ui_login_attempts (last_attempt);
