-- The web UI (vdc/web): login sessions, and the index behind the Hosts page's
-- filtered, paginated node list.

CREATE TABLE ui_sessions (
    -- sha256 of the 256-bit random session id the browser holds in its cookie; the
    -- id itself is never stored, so a database dump opens no session.
    id_hash     bytea PRIMARY KEY CHECK (length(id_hash) = 32),
    created_at  timestamptz NOT NULL,
    -- last authenticated request (written at most once a minute): the idle timeout.
    last_seen   timestamptz NOT NULL,
    -- the absolute limit, whatever the activity.
    expires_at  timestamptz NOT NULL,
    remote_addr text NOT NULL DEFAULT '',
    user_agent  text NOT NULL DEFAULT ''
);
CREATE INDEX ui_sessions_expires_at ON ui_sessions (expires_at);

-- One phase tab of the Hosts page, in hostname order, is a range of this index: a
-- page of a rare phase (10 disconnected among 10,000) reads its rows only. Heartbeats
-- keep their HOT updates: they rarely change the phase.
CREATE INDEX nodes_phase_hostname ON nodes (phase, hostname);
