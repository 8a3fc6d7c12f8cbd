-- The QvDC appliances' own upgrades (docs/design.md §16): what each vDC asked
-- its local qx-init to stage or reboot into, and what init answered. Keyed by the
-- vDC's hostname: several vDCs may share this database (§17), each upgrades itself.
CREATE TABLE controller_events (
    id       bigserial PRIMARY KEY,
    hostname text NOT NULL,
    kind     text NOT NULL,
    message  text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX controller_events_hostname ON controller_events (hostname, id);
