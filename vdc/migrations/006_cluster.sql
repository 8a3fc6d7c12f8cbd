-- What every vDC process sharing this database must agree on (docs/design.md §17),
-- in one row: the epoch that decides when nodes send a full state, the database
-- server timeline it belongs to (a failover or a restore changes the timeline, and
-- with it the epoch: one full sync per node per failover, however many vDCs the
-- node talks to), and the liveness grace before which no node is demoted (after a
-- vDC start, a failover or a write outage: the control plane's own trouble).
CREATE TABLE cluster_state (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch           uuid NOT NULL,
    server_timeline text NOT NULL,
    grace_until     timestamptz NOT NULL,
    grace_reason    text NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
