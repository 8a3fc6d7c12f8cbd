-- What a node's agent says of its hypervisor beyond state and libvirt version
-- (docs/design.md §13): the QEMU version, the accelerator its guests run with (kvm
-- or tcg, and why not kvm), and whether VM definitions and disks persist
-- (QUANTIX-DATA) or live in RAM. One jsonb object, written by registrations,
-- state reports and heartbeats alike.
ALTER TABLE nodes ADD COLUMN hypervisor_facts jsonb NOT NULL DEFAULT '{}';
