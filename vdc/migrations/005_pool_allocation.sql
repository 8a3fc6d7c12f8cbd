-- What a storage pool's volumes take, next to its capacity and free space
-- (docs/design.md §13): libvirt's allocation as the node reports it.
ALTER TABLE storage_pools ADD COLUMN allocation_bytes bigint NOT NULL DEFAULT 0;
