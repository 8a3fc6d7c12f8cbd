-- The CAs for agent traffic (docs/design.md §15, §17): cluster-wide, so every vDC on
-- this database serves certificates agents trust with the same pins. The vDC that
-- starts first creates the first CA (under an advisory lock); a rotation adds the
-- next one with serving_from at the end of the overlap, while the pins of both are
-- announced to the agents. A CA serves from its serving_from until the next one's.
CREATE TABLE agent_ca (
    id           bigserial PRIMARY KEY,
    pin          text NOT NULL UNIQUE,
    cert_pem     text NOT NULL,
    key_pem      text NOT NULL,
    not_before   timestamptz NOT NULL,
    not_after    timestamptz NOT NULL,
    serving_from timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agent_ca_serving_from ON agent_ca (serving_from);
