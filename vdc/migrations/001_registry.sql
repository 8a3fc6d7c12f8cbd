-- The node registry (DESIGN §4, §6): one row per hostname, its history, and the join
-- tokens that admit new nodes.

CREATE TABLE nodes (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- lower case, RFC 1123; the vDC validates before it gets here.
    hostname           text NOT NULL UNIQUE
                       CHECK (hostname = lower(hostname) AND length(hostname) BETWEEN 1 AND 253),
    machine_id         text NOT NULL CHECK (machine_id <> ''),
    -- sha256 of the node's 32-byte random secret.
    secret_hash        bytea NOT NULL CHECK (length(secret_hash) = 32),
    management_ip      inet NOT NULL,
    agent_version      text NOT NULL DEFAULT '',
    cpu_model          text NOT NULL DEFAULT '',
    cpu_sockets        integer NOT NULL DEFAULT 0,
    cpu_cores          integer NOT NULL DEFAULT 0,
    cpu_threads        integer NOT NULL DEFAULT 0,
    memory_bytes       bigint NOT NULL DEFAULT 0,
    labels             jsonb NOT NULL DEFAULT '{}'::jsonb,
    hypervisor_state   text NOT NULL DEFAULT 'unknown',
    hypervisor_reason  text NOT NULL DEFAULT '',
    hypervisor_uri     text NOT NULL DEFAULT '',
    hypervisor_version text NOT NULL DEFAULT '',
    cpu_percent        double precision,
    memory_used_bytes  bigint,
    phase              text NOT NULL DEFAULT 'ready'
                       CHECK (phase IN ('ready', 'not_ready', 'disconnected', 'maintenance')),
    -- registered, reregistered or reenrolled: how the node last registered.
    last_registration  text NOT NULL
                       CHECK (last_registration IN ('registered', 'reregistered', 'reenrolled')),
    -- StateHash of the inventory the vDC holds for the node.
    state_hash         text NOT NULL DEFAULT '',
    -- The vDC process (a random id per start) that last received a full state PUT;
    -- any other value means the node must send its full state again.
    state_epoch        uuid,
    registered_at      timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    last_heartbeat     timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 70); -- room for HOT updates: a heartbeat touches no indexed column

CREATE TABLE node_events (
    id       bigserial PRIMARY KEY,
    -- no foreign key: the history of a deleted node stays readable.
    node_id  uuid NOT NULL,
    hostname text NOT NULL,
    kind     text NOT NULL,
    message  text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX node_events_node_id ON node_events (node_id, id);

CREATE TABLE join_tokens (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    token_hash  bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    uses_left   integer NOT NULL CHECK (uses_left >= 0)
);
