package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quantix/quantix"
)

// Reasons recorded on inventory rows that went missing.
const (
	LostMissingFromState = "not reported in the node's full state"
	LostRemovedOnHost    = "removed on the host (event)"
)

const upsertVMsSQL = `
INSERT INTO virtual_machines AS v (node_id, uuid, name, power_state, vcpus, memory_bytes, error)
SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::int[], $6::int8[], $7::text[])
ON CONFLICT (node_id, uuid) DO UPDATE SET
    name = excluded.name, power_state = excluded.power_state, vcpus = excluded.vcpus,
    memory_bytes = excluded.memory_bytes, error = excluded.error, last_seen = now(), lost_reason = NULL, lost_at = NULL`

const upsertPoolsSQL = `
INSERT INTO storage_pools AS p (node_id, name, uuid, type, path, state, capacity_bytes, available_bytes, allocation_bytes)
SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::int8[], $9::int8[])
ON CONFLICT (node_id, name) DO UPDATE SET
    uuid = excluded.uuid, type = excluded.type, path = excluded.path, state = excluded.state,
    capacity_bytes = excluded.capacity_bytes, available_bytes = excluded.available_bytes,
    allocation_bytes = excluded.allocation_bytes,
    last_seen = now(), lost_reason = NULL, lost_at = NULL`

func upsertVMs(ctx context.Context, tx pgx.Tx, nodeID string, vms []quantix.VM) error {
	if len(vms) == 0 {
		return nil
	}
	uuids, names, states := make([]string, len(vms)), make([]string, len(vms)), make([]string, len(vms))
	vcpus, mems, errs := make([]int32, len(vms)), make([]int64, len(vms)), make([]string, len(vms))
	for i, v := range vms {
		uuids[i], names[i], states[i], vcpus[i], mems[i], errs[i] = v.UUID, v.Name, v.PowerState, int32(v.VCPUs), v.MemoryBytes, v.Error
	}
	if _, err := tx.Exec(ctx, upsertVMsSQL, nodeID, uuids, names, states, vcpus, mems, errs); err != nil {
		return fmt.Errorf("upsert %d vms: %w", len(vms), err)
	}
	return nil
}

func upsertPools(ctx context.Context, tx pgx.Tx, nodeID string, pools []quantix.StoragePool) error {
	if len(pools) == 0 {
		return nil
	}
	n := len(pools)
	names, uuids, types, paths, states := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	caps, avails, allocs := make([]int64, n), make([]int64, n), make([]int64, n)
	for i, p := range pools {
		names[i], uuids[i], types[i], paths[i], states[i] = p.Name, p.UUID, p.Type, p.Path, p.State
		caps[i], avails[i], allocs[i] = p.CapacityBytes, p.AvailableBytes, p.AllocationBytes
	}
	if _, err := tx.Exec(ctx, upsertPoolsSQL, nodeID, names, uuids, types, paths, states, caps, avails, allocs); err != nil {
		return fmt.Errorf("upsert %d storage pools: %w", n, err)
	}
	return nil
}

// lockNode locks an authenticated node's row for an inventory change, so changes of
// one node serialize. It tells unknown nodes (ErrNotFound) from wrong secrets.
func (s *Store) lockNode(ctx context.Context, tx pgx.Tx, nodeID string, secret [32]byte) (hostname, epoch string, err error) {
	err = tx.QueryRow(ctx, `SELECT hostname, coalesce(state_epoch::text, '') FROM nodes WHERE id = $1 AND secret_hash = $2 FOR UPDATE`,
		nodeID, secret[:]).Scan(&hostname, &epoch)
	if isNoRows(err) {
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM nodes WHERE id = $1)`, nodeID).Scan(&exists); err != nil {
			return "", "", err
		}
		if exists {
			return "", "", fmt.Errorf("node %s: node_secret changed (re-enrolled?): %w", nodeID, ErrUnauthorized)
		}
		s.forget(nodeID)
		return "", "", fmt.Errorf("node %s: %w", nodeID, ErrNotFound)
	}
	return hostname, epoch, err
}

// lostEvents records found-again and lost inventory in the node's history.
func lostEvents(ctx context.Context, tx pgx.Tx, nodeID, hostname string, q string, args ...any) error {
	rows, err := tx.Query(ctx, q, args...)
	if err != nil {
		return err
	}
	type ev struct{ kind, msg string }
	evs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ev, error) {
		var e ev
		err := r.Scan(&e.kind, &e.msg)
		return e, err
	})
	if err != nil {
		return err
	}
	for _, e := range evs {
		if err := addEvent(ctx, tx, nodeID, hostname, e.kind, e.msg); err != nil {
			return err
		}
	}
	return nil
}

// PutState replaces what the vDC knows of a node's VMs and storage pools with a
// full report: everything listed is upserted (and found again if it was lost);
// everything of the node not listed is marked lost, never deleted.
func (s *Store) PutState(ctx context.Context, nodeID string, secret [32]byte, st quantix.NodeState) (quantix.StateAck, error) {
	hash := quantix.StateHash(st.VMs, st.StoragePools)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		hostname, _, err := s.lockNode(ctx, tx, nodeID, secret)
		if err != nil {
			return err
		}
		vmIDs := make([]string, len(st.VMs))
		for i, v := range st.VMs {
			vmIDs[i] = v.UUID
		}
		poolNames := make([]string, len(st.StoragePools))
		for i, p := range st.StoragePools {
			poolNames[i] = p.Name
		}
		// Before the upsert clears lost_at: which of the reported ones come back?
		if err := lostEvents(ctx, tx, nodeID, hostname, `
			SELECT 'vm_found', 'vm ' || name || ' (' || uuid || ') reported again after being lost: ' || lost_reason
			FROM virtual_machines WHERE node_id = $1 AND lost_at IS NOT NULL AND uuid = ANY($2)
			UNION ALL
			SELECT 'pool_found', 'storage pool ' || name || ' reported again after being lost: ' || lost_reason
			FROM storage_pools WHERE node_id = $1 AND lost_at IS NOT NULL AND name = ANY($3)`,
			nodeID, vmIDs, poolNames); err != nil {
			return err
		}
		if err := upsertVMs(ctx, tx, nodeID, st.VMs); err != nil {
			return err
		}
		if err := upsertPools(ctx, tx, nodeID, st.StoragePools); err != nil {
			return err
		}
		if err := lostEvents(ctx, tx, nodeID, hostname, `
			WITH v AS (
			    UPDATE virtual_machines SET lost_reason = $4, lost_at = now()
			    WHERE node_id = $1 AND lost_at IS NULL AND NOT (uuid = ANY($2))
			    RETURNING name, uuid
			), p AS (
			    UPDATE storage_pools SET lost_reason = $4, lost_at = now()
			    WHERE node_id = $1 AND lost_at IS NULL AND NOT (name = ANY($3))
			    RETURNING name
			)
			SELECT 'vm_lost', 'vm ' || name || ' (' || uuid || ') lost: ' || $4 FROM v
			UNION ALL
			SELECT 'pool_lost', 'storage pool ' || name || ' lost: ' || $4 FROM p`,
			nodeID, vmIDs, poolNames, LostMissingFromState); err != nil {
			return err
		}
		if err := applied(ctx, tx, nodeID, st.AppliedGeneration, vmIDs); err != nil {
			return err
		}
		return s.setNodeState(ctx, tx, nodeID, hash, true, st.Hypervisor)
	})
	if err != nil {
		return quantix.StateAck{}, fmt.Errorf("node %s full state: %w", nodeID, err)
	}
	return quantix.StateAck{StateHash: hash}, nil
}

func (s *Store) setNodeState(ctx context.Context, tx pgx.Tx, nodeID, hash string, full bool, h *quantix.Hypervisor) error {
	var hs, hr, hu, hv *string
	if h != nil {
		hs, hr, hu, hv = &h.State, &h.Reason, &h.URI, &h.Version
	}
	var epoch *string
	if full {
		e := s.Epoch()
		epoch = &e
	}
	// The row is locked (lockNode), so prev reads the state this update replaces.
	_, err := tx.Exec(ctx, `WITH prev AS (SELECT hypervisor_state FROM nodes WHERE id = $1), up AS (
		UPDATE nodes n SET state_hash = $2, state_epoch = coalesce($3::uuid, state_epoch),
		    hypervisor_state = coalesce($4, n.hypervisor_state), hypervisor_reason = coalesce($5, n.hypervisor_reason),
		    hypervisor_uri = coalesce($6, n.hypervisor_uri), hypervisor_version = coalesce($7, n.hypervisor_version),
		    hypervisor_facts = coalesce($8::jsonb, n.hypervisor_facts),
		    updated_at = now()
		FROM prev WHERE n.id = $1
		RETURNING n.id, n.hostname, prev.hypervisor_state AS old_hs, n.hypervisor_state AS hs, n.hypervisor_reason AS hr)
		INSERT INTO node_events (node_id, hostname, kind, message)
		SELECT id, hostname, 'hypervisor', `+hypervisorEvent("state")+` FROM up
		WHERE hs IS DISTINCT FROM old_hs`, nodeID, hash, epoch, hs, hr, hu, hv, hypervisorFactsJSON(h))
	if err != nil {
		return fmt.Errorf("store state hash: %w", err)
	}
	return nil
}

// ApplyEvents applies incremental changes. The ack asks for a full state when the
// node's own hash of its state differs from the vDC's after the events, or when this
// vDC process has not had a full state from the node yet.
func (s *Store) ApplyEvents(ctx context.Context, nodeID string, secret [32]byte, evs quantix.NodeEvents) (quantix.StateAck, error) {
	var ack quantix.StateAck
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		hostname, epoch, err := s.lockNode(ctx, tx, nodeID, secret)
		if err != nil {
			return err
		}
		for i, e := range evs.Events {
			var err error
			switch {
			case e.Kind == quantix.EventKindVM && e.Action == quantix.EventActionUpsert:
				err = lostEvents(ctx, tx, nodeID, hostname, `SELECT 'vm_found', 'vm ' || name || ' (' || uuid || ') reported again after being lost: ' || lost_reason
					FROM virtual_machines WHERE node_id = $1 AND uuid = $2 AND lost_at IS NOT NULL`, nodeID, e.VM.UUID)
				if err == nil {
					err = upsertVMs(ctx, tx, nodeID, []quantix.VM{*e.VM})
				}
			case e.Kind == quantix.EventKindVM:
				err = lostEvents(ctx, tx, nodeID, hostname, `UPDATE virtual_machines SET lost_reason = $3, lost_at = now()
					WHERE node_id = $1 AND uuid = $2 AND lost_at IS NULL
					RETURNING 'vm_lost', 'vm ' || name || ' (' || uuid || ') lost: ' || $3`, nodeID, e.VM.UUID, LostRemovedOnHost)
			case e.Action == quantix.EventActionUpsert:
				err = lostEvents(ctx, tx, nodeID, hostname, `SELECT 'pool_found', 'storage pool ' || name || ' reported again after being lost: ' || lost_reason
					FROM storage_pools WHERE node_id = $1 AND name = $2 AND lost_at IS NOT NULL`, nodeID, e.StoragePool.Name)
				if err == nil {
					err = upsertPools(ctx, tx, nodeID, []quantix.StoragePool{*e.StoragePool})
				}
			default:
				err = lostEvents(ctx, tx, nodeID, hostname, `UPDATE storage_pools SET lost_reason = $3, lost_at = now()
					WHERE node_id = $1 AND name = $2 AND lost_at IS NULL
					RETURNING 'pool_lost', 'storage pool ' || name || ' lost: ' || $3`, nodeID, e.StoragePool.Name, LostRemovedOnHost)
			}
			if err != nil {
				return fmt.Errorf("events[%d]: %w", i, err)
			}
		}
		vms, pools, err := currentState(ctx, tx, nodeID)
		if err != nil {
			return err
		}
		ack.StateHash = quantix.StateHash(vms, pools)
		ack.FullSync = ack.StateHash != evs.StateHash || epoch != s.Epoch()
		return s.setNodeState(ctx, tx, nodeID, ack.StateHash, false, nil)
	})
	if err != nil {
		return quantix.StateAck{}, fmt.Errorf("node %s events: %w", nodeID, err)
	}
	return ack, nil
}

// currentState is the node's VMs and pools that are not lost, as the agent would
// report them.
func currentState(ctx context.Context, tx pgx.Tx, nodeID string) ([]quantix.VM, []quantix.StoragePool, error) {
	rows, err := tx.Query(ctx, `SELECT uuid, name, power_state, vcpus, memory_bytes, error FROM virtual_machines
		WHERE node_id = $1 AND lost_at IS NULL`, nodeID)
	if err != nil {
		return nil, nil, err
	}
	vms, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (quantix.VM, error) {
		var v quantix.VM
		err := r.Scan(&v.UUID, &v.Name, &v.PowerState, &v.VCPUs, &v.MemoryBytes, &v.Error)
		return v, err
	})
	if err != nil {
		return nil, nil, err
	}
	rows, err = tx.Query(ctx, `SELECT uuid, name, type, path, state, capacity_bytes, available_bytes, allocation_bytes FROM storage_pools
		WHERE node_id = $1 AND lost_at IS NULL`, nodeID)
	if err != nil {
		return nil, nil, err
	}
	pools, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (quantix.StoragePool, error) {
		var p quantix.StoragePool
		err := r.Scan(&p.UUID, &p.Name, &p.Type, &p.Path, &p.State, &p.CapacityBytes, &p.AvailableBytes, &p.AllocationBytes)
		return p, err
	})
	return vms, pools, err
}

// ListVMs is the VM inventory of every node, lost VMs included.
func (s *Store) ListVMs(ctx context.Context) ([]quantix.InventoryVM, error) {
	vms, _, err := s.FindVMs(ctx, InventoryFilter{})
	return vms, err
}

// FindVMs returns the VMs f selects, ordered by hostname, name and UUID, and how
// many there are in all pages.
func (s *Store) FindVMs(ctx context.Context, f InventoryFilter) ([]quantix.InventoryVM, int, error) {
	w, args := f.sql("v")
	lim, args := f.page(args)
	// A domain is managed when the vDC created it: a managed VM of its node by UUID.
	rows, err := s.pool.Query(ctx, `SELECT v.uuid, v.name, v.power_state, v.vcpus, v.memory_bytes, v.error, v.node_id::text,
		    n.hostname, CASE WHEN m.uuid IS NULL THEN v.origin ELSE 'managed' END, v.is_managed OR m.uuid IS NOT NULL,
		    v.last_seen, coalesce(v.lost_reason, ''), v.lost_at
		FROM virtual_machines v JOIN nodes n ON n.id = v.node_id
		LEFT JOIN managed_vms m ON m.node_id = v.node_id AND m.uuid::text = lower(v.uuid)`+w+` ORDER BY n.hostname, v.name, v.uuid`+lim, args...)
	if err != nil {
		return nil, 0, fmt.Errorf("list vms: %w", err)
	}
	vms, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (quantix.InventoryVM, error) {
		var v quantix.InventoryVM
		err := r.Scan(&v.UUID, &v.Name, &v.PowerState, &v.VCPUs, &v.MemoryBytes, &v.Error, &v.NodeID, &v.Hostname,
			&v.Origin, &v.IsManaged, &v.LastSeen, &v.LostReason, &v.LostAt)
		v.Lost = v.LostAt != nil
		return v, err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("list vms: %w", err)
	}
	if vms == nil {
		vms = []quantix.InventoryVM{}
	}
	total := len(vms)
	if f.Limit > 0 && (total == f.Limit || f.Offset > 0) {
		if total, err = s.count(ctx, "virtual_machines", "v", f); err != nil {
			return nil, 0, fmt.Errorf("count vms: %w", err)
		}
	}
	return vms, total, nil
}

// ListPools is the storage pool inventory of every node, lost pools included.
func (s *Store) ListPools(ctx context.Context) ([]quantix.InventoryPool, error) {
	pools, _, err := s.FindPools(ctx, InventoryFilter{})
	return pools, err
}

// FindPools returns the storage pools f selects, ordered by hostname and name, and
// how many there are in all pages.
func (s *Store) FindPools(ctx context.Context, f InventoryFilter) ([]quantix.InventoryPool, int, error) {
	w, args := f.sql("p")
	lim, args := f.page(args)
	rows, err := s.pool.Query(ctx, `SELECT p.uuid, p.name, p.type, p.path, p.state, p.capacity_bytes, p.available_bytes,
		    p.allocation_bytes, p.node_id::text, n.hostname, p.origin, p.is_managed, p.last_seen, p.lost_at
		FROM storage_pools p JOIN nodes n ON n.id = p.node_id`+w+` ORDER BY n.hostname, p.name`+lim, args...)
	if err != nil {
		return nil, 0, fmt.Errorf("list storage pools: %w", err)
	}
	pools, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (quantix.InventoryPool, error) {
		var p quantix.InventoryPool
		err := r.Scan(&p.UUID, &p.Name, &p.Type, &p.Path, &p.State, &p.CapacityBytes, &p.AvailableBytes,
			&p.AllocationBytes, &p.NodeID, &p.Hostname, &p.Origin, &p.IsManaged, &p.LastSeen, &p.LostAt)
		p.Lost = p.LostAt != nil
		return p, err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("list storage pools: %w", err)
	}
	if pools == nil {
		pools = []quantix.InventoryPool{}
	}
	total := len(pools)
	if f.Limit > 0 && (total == f.Limit || f.Offset > 0) {
		if total, err = s.count(ctx, "storage_pools", "p", f); err != nil {
			return nil, 0, fmt.Errorf("count storage pools: %w", err)
		}
	}
	return pools, total, nil
}

// CreateJoinToken stores a new join token's digest and returns the token (shown
// once).
func (s *Store) CreateJoinToken(ctx context.Context, ttl time.Duration, uses int, description string) (quantix.JoinToken, error) {
	tok := quantix.JoinToken{Token: NewSecret(), UsesLeft: uses, Description: description}
	h := HashSecret(tok.Token)
	err := s.pool.QueryRow(ctx, `INSERT INTO join_tokens (token_hash, description, expires_at, uses_left)
		VALUES ($1, $2, now() + $3::interval, $4) RETURNING id::text, expires_at`, h[:], description, ttl, uses).
		Scan(&tok.ID, &tok.ExpiresAt)
	if err != nil {
		return quantix.JoinToken{}, fmt.Errorf("create join token: %w", err)
	}
	return tok, nil
}

// applied records the desired generation a node converged to and drops the
// tombstones it has dealt with: applied at or after their deletion and no longer
// reported (reported lists the UUIDs of its full state).
func applied(ctx context.Context, tx pgx.Tx, nodeID string, gen int64, reported []string) error {
	if _, err := tx.Exec(ctx, `UPDATE nodes SET applied_generation = $2, state_generation = $2 WHERE id = $1`, nodeID, gen); err != nil {
		return fmt.Errorf("applied generation: %w", err)
	}
	lower := make([]string, len(reported))
	for i, u := range reported {
		lower[i] = strings.ToLower(u)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM vm_tombstones WHERE node_id = $1 AND generation <= $2 AND NOT (uuid::text = ANY($3))`,
		nodeID, gen, lower); err != nil {
		return fmt.Errorf("drop tombstones: %w", err)
	}
	return nil
}
