-- Upgrades delivered by the vDC (docs/design.md §16): verified release bundles
-- (their files live in data_dir/releases/<id>/), rolling upgrade jobs with their
-- nodes in order, and per node the operating system its heartbeats report.

CREATE TABLE releases (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    image      text NOT NULL CHECK (image IN ('quantix-os', 'qvdc')),
    version    text NOT NULL CHECK (version <> ''),
    signed_by  text NOT NULL,
    -- []quantix.ReleaseFile: name, size_bytes, sha256 of each file of the bundle.
    files      jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (image, version)
);

CREATE TABLE upgrades (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- SET NULL: a finished job's history outlives its release; image and version
    -- keep what it installed. A running job's release cannot be deleted.
    release_id   uuid REFERENCES releases (id) ON DELETE SET NULL,
    image        text NOT NULL,
    version      text NOT NULL,
    activate     boolean NOT NULL,
    state        text NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    current_node uuid,
    reason       text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
-- One rolling upgrade at a time, whichever vDC started it.
CREATE UNIQUE INDEX upgrades_one_running ON upgrades ((true)) WHERE state = 'running';

CREATE TABLE upgrade_nodes (
    upgrade_id   uuid NOT NULL REFERENCES upgrades (id) ON DELETE CASCADE,
    idx          integer NOT NULL,
    -- no foreign key: a deleted node fails the job, its row stays readable.
    node_id      uuid NOT NULL,
    hostname     text NOT NULL,
    from_version text NOT NULL,
    phase        text NOT NULL DEFAULT 'pending'
                 CHECK (phase IN ('pending', 'skipped', 'staging', 'activating', 'done', 'failed', 'cancelled')),
    error        text NOT NULL DEFAULT '',
    -- The node's slots when it was told to activate: a rollback is only believed
    -- once they changed (a node that rolled back earlier reports rolled-back until
    -- its next commit).
    slots_before jsonb,
    started_at   timestamptz,
    finished_at  timestamptz,
    PRIMARY KEY (upgrade_id, idx),
    UNIQUE (upgrade_id, node_id)
);
CREATE INDEX upgrade_nodes_node_id ON upgrade_nodes (node_id) WHERE phase IN ('staging', 'activating');

-- What the node's heartbeats say of its operating system (quantix.NodeOS). os_hash
-- is the sha256 of the last NodeOS written: a heartbeat whose OS has that hash
-- writes none of these columns.
ALTER TABLE nodes
    ADD COLUMN os_image   text NOT NULL DEFAULT '',
    ADD COLUMN os_version text NOT NULL DEFAULT '',
    ADD COLUMN os_slots   jsonb,
    ADD COLUMN os_upgrade jsonb,
    ADD COLUMN os_hash    text NOT NULL DEFAULT '';
