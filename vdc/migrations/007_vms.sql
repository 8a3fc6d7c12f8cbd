-- VMs driven from the vDC (docs/design.md §14): the spec and wanted power state of
-- managed VMs, their disks and NICs, the image library, deleted VMs a node may still
-- have, the newest console output per VM, and per node the desired generation (grows
-- with every change of one of its VMs) and the one it last applied.

ALTER TABLE nodes
    ADD COLUMN desired_generation bigint NOT NULL DEFAULT 0,
    ADD COLUMN applied_generation bigint NOT NULL DEFAULT 0,
    -- The applied generation of the node's last full state: a managed VM created at
    -- or before it that the state does not list is lost, not pending.
    ADD COLUMN state_generation bigint NOT NULL DEFAULT 0;

-- Why the node could not converge a managed VM (quantix.VM.Error).
ALTER TABLE virtual_machines ADD COLUMN error text NOT NULL DEFAULT '';

CREATE TABLE images (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL UNIQUE CHECK (name <> ''),
    format     text NOT NULL CHECK (format IN ('raw', 'qcow2', 'iso')),
    size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
    sha256     text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    path       text NOT NULL,  -- file name inside the vDC's data_dir
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE managed_vms (
    uuid               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name               text NOT NULL UNIQUE,
    -- No cascade: a node with VMs is deleted only with force, which deletes them first.
    node_id            uuid NOT NULL REFERENCES nodes (id),
    -- quantix.VMSpec as the operator gave it, NIC MACs filled in. vm_disks and vm_nics
    -- repeat the parts that need constraints (image references, unique MACs).
    spec               jsonb NOT NULL,
    memory_bytes       bigint NOT NULL CHECK (memory_bytes > 0),  -- placement sums it
    cdrom_image_id     uuid REFERENCES images (id),
    wanted             text NOT NULL CHECK (wanted IN ('running', 'stopped')),
    force_stop         boolean NOT NULL DEFAULT false,
    reboot_count       bigint NOT NULL DEFAULT 0,
    -- The node's desired generation of the VM's last change, and of its creation.
    generation         bigint NOT NULL,
    created_generation bigint NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX managed_vms_node_id ON managed_vms (node_id);

CREATE TABLE vm_disks (
    vm_uuid    uuid NOT NULL REFERENCES managed_vms (uuid) ON DELETE CASCADE,
    idx        integer NOT NULL,
    size_bytes bigint NOT NULL,
    image_id   uuid REFERENCES images (id),  -- RESTRICT: an image in use stays
    PRIMARY KEY (vm_uuid, idx)
);
CREATE INDEX vm_disks_image_id ON vm_disks (image_id) WHERE image_id IS NOT NULL;

CREATE TABLE vm_nics (
    vm_uuid uuid NOT NULL REFERENCES managed_vms (uuid) ON DELETE CASCADE,
    idx     integer NOT NULL,
    network text NOT NULL,
    mac     text NOT NULL UNIQUE,
    PRIMARY KEY (vm_uuid, idx)
);

-- Deleted VMs their node may still have: the node undefines them (and removes their
-- disks unless keep_disks); the row goes once the node applied generation and no
-- longer reports the VM.
CREATE TABLE vm_tombstones (
    uuid       uuid PRIMARY KEY,
    name       text NOT NULL,
    node_id    uuid NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    keep_disks boolean NOT NULL,
    generation bigint NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vm_tombstones_node_id ON vm_tombstones (node_id);

-- The newest serial console output of a managed VM, as its node last sent it.
CREATE TABLE vm_consoles (
    vm_uuid    uuid PRIMARY KEY REFERENCES managed_vms (uuid) ON DELETE CASCADE,
    data       bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A managed VM's history (created, changed, power actions); kept after deletion.
CREATE TABLE vm_events (
    id      bigserial PRIMARY KEY,
    vm_uuid uuid NOT NULL,
    kind    text NOT NULL,
    message text NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vm_events_vm_uuid ON vm_events (vm_uuid, id);
