-- What the nodes report (DESIGN §5): libvirt domains and storage pools per node. Rows
-- are never deleted when a node stops reporting them; they are marked lost.

CREATE TABLE virtual_machines (
    id           bigserial PRIMARY KEY,
    node_id      uuid NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    uuid         text NOT NULL,  -- libvirt domain UUID, as the host spells it
    name         text NOT NULL,
    power_state  text NOT NULL,
    vcpus        integer NOT NULL DEFAULT 0,
    memory_bytes bigint NOT NULL DEFAULT 0,
    origin       text NOT NULL DEFAULT 'discovered' CHECK (origin IN ('discovered', 'managed')),
    is_managed   boolean NOT NULL DEFAULT false,
    first_seen   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now(),
    lost_reason  text,
    lost_at      timestamptz,
    UNIQUE (node_id, uuid),
    CHECK ((lost_at IS NULL) = (lost_reason IS NULL))
);

CREATE TABLE storage_pools (
    id              bigserial PRIMARY KEY,
    node_id         uuid NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    name            text NOT NULL,
    uuid            text NOT NULL DEFAULT '',
    type            text NOT NULL DEFAULT '',
    path            text NOT NULL DEFAULT '',
    state           text NOT NULL DEFAULT '',  -- per-node status as libvirt reports it
    capacity_bytes  bigint NOT NULL DEFAULT 0,
    available_bytes bigint NOT NULL DEFAULT 0,
    origin          text NOT NULL DEFAULT 'discovered' CHECK (origin IN ('discovered', 'managed')),
    is_managed      boolean NOT NULL DEFAULT false,
    first_seen      timestamptz NOT NULL DEFAULT now(),
    last_seen       timestamptz NOT NULL DEFAULT now(),
    lost_reason     text,
    lost_at         timestamptz,
    UNIQUE (node_id, name),
    CHECK ((lost_at IS NULL) = (lost_reason IS NULL))
);
