package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quantix/quantix"
)

// Registration is a validated registration request.
type Registration struct {
	Hostname     string // normalized (lower case, RFC 1123)
	MachineID    string
	NodeSecret   string
	ManagementIP netip.Addr
	AgentVersion string
	CPU          quantix.CPUInfo
	MemoryBytes  int64
	Labels       map[string]string
	Hypervisor   *quantix.Hypervisor // nil: keep what is stored
	JoinToken    string              // as presented; "" when none
}

// RegisterResult answers Register.
type RegisterResult struct {
	NodeID string
	Kind   string // quantix.Registration*
}

// tokenCheck is what the presented join token is worth before the registration.
type tokenCheck struct {
	ok     bool
	dbID   string // a database token to consume if the registration needs it
	reason string // why it is not ok
}

func (s *Store) checkToken(ctx context.Context, token string) (tokenCheck, error) {
	if token == "" {
		return tokenCheck{reason: "no join token was presented (Authorization: Bearer <join token>)"}, nil
	}
	// Agents send the secret; a full qx1.<pin>.<secret> is accepted as well.
	token = quantix.SecretOfJoinToken(token)
	if s.staticTokenOK(token) {
		return tokenCheck{ok: true}, nil
	}
	h := HashSecret(token)
	var (
		id       string
		stored   []byte
		expired  bool
		usesLeft int
	)
	err := s.pool.QueryRow(ctx,
		`SELECT id, token_hash, expires_at <= now(), uses_left FROM join_tokens WHERE token_hash = $1`, h[:]).
		Scan(&id, &stored, &expired, &usesLeft)
	switch {
	case isNoRows(err):
		return tokenCheck{reason: "the join token is not known to this vDC"}, nil
	case err != nil:
		return tokenCheck{}, fmt.Errorf("look up join token: %w", err)
	case !SameDigest(stored, h[:]):
		return tokenCheck{reason: "the join token is not known to this vDC"}, nil
	case expired:
		return tokenCheck{reason: fmt.Sprintf("join token %s has expired", id)}, nil
	case usesLeft <= 0:
		return tokenCheck{reason: fmt.Sprintf("join token %s has no uses left", id)}, nil
	}
	return tokenCheck{ok: true, dbID: id}, nil
}

// registerSQL is the registration: one upsert decides every rule of docs/design.md §4.
//   - no row for the hostname and a valid join token: insert ("registered");
//   - a row with the same secret digest: update it ("reregistered");
//   - a row with another secret, the same machine_id and a valid join token:
//     replace the secret ("reenrolled");
//   - anything else changes nothing and returns no row; the caller then reads the
//     row to say why (409 takeover or 401).
//
// Concurrent registrations of one hostname serialize on the unique index: the
// losers of the insert race take the ON CONFLICT branch against the winner's
// committed row, so there is exactly one row and no duplicate-key error. prev
// locks the existing row (if any) only to report the phase it had.
const registerSQL = `
WITH prev AS (
    SELECT phase FROM nodes WHERE hostname = $1 FOR UPDATE
), up AS (
    INSERT INTO nodes AS n (hostname, machine_id, secret_hash, management_ip, agent_version,
        cpu_model, cpu_sockets, cpu_cores, cpu_threads, memory_bytes, labels,
        hypervisor_state, hypervisor_reason, hypervisor_uri, hypervisor_version, hypervisor_facts,
        last_registration)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
        coalesce($12, 'unknown'), coalesce($13, ''), coalesce($14, ''), coalesce($15, ''), coalesce($17::jsonb, '{}'),
        'registered'
    -- Without a valid token only an existing hostname may be updated.
    WHERE $16::boolean OR EXISTS (SELECT FROM prev)
    ON CONFLICT (hostname) DO UPDATE SET
        last_registration = CASE WHEN n.secret_hash = excluded.secret_hash
                                 THEN 'reregistered' ELSE 'reenrolled' END,
        secret_hash = excluded.secret_hash,
        machine_id = excluded.machine_id,
        management_ip = excluded.management_ip,
        agent_version = excluded.agent_version,
        cpu_model = excluded.cpu_model, cpu_sockets = excluded.cpu_sockets,
        cpu_cores = excluded.cpu_cores, cpu_threads = excluded.cpu_threads,
        memory_bytes = excluded.memory_bytes,
        labels = excluded.labels,
        hypervisor_state = coalesce($12, n.hypervisor_state),
        hypervisor_reason = coalesce($13, n.hypervisor_reason),
        hypervisor_uri = coalesce($14, n.hypervisor_uri),
        hypervisor_version = coalesce($15, n.hypervisor_version),
        hypervisor_facts = coalesce($17::jsonb, n.hypervisor_facts),
        phase = CASE WHEN n.phase = 'maintenance' THEN n.phase ELSE 'ready' END,
        last_heartbeat = now(),
        updated_at = now()
    WHERE n.secret_hash = excluded.secret_hash
       OR (n.machine_id = excluded.machine_id AND $16::boolean)
    RETURNING n.id, n.last_registration, n.phase
)
SELECT up.id, up.last_registration, up.phase, (SELECT phase FROM prev) FROM up`

// Register applies docs/design.md §4. It returns a *TakeoverError for rule 4 and an error
// wrapping ErrUnauthorized when a join token was needed and not valid.
func (s *Store) Register(ctx context.Context, r Registration) (RegisterResult, error) {
	tok, err := s.checkToken(ctx, r.JoinToken)
	if err != nil {
		return RegisterResult{}, err
	}
	secret := HashSecret(r.NodeSecret)
	labels := r.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	labelsJSON, err := json.Marshal(labels)
	if err != nil {
		return RegisterResult{}, fmt.Errorf("register %s: labels: %w", r.Hostname, err)
	}
	var hs, hr, hu, hv *string
	if h := r.Hypervisor; h != nil {
		hs, hr, hu, hv = &h.State, &h.Reason, &h.URI, &h.Version
	}
	var res RegisterResult
	var refusal error
	for attempt := 0; ; attempt++ {
		res, refusal, err = s.register(ctx, r, tok, secret, labelsJSON, hs, hr, hu, hv, hypervisorFactsJSON(r.Hypervisor))
		// The conflicting row was deleted between the upsert and the read that
		// explains it: the hostname is free now, try again.
		if !errors.Is(refusal, errRowVanished) || attempt == 2 {
			break
		}
	}
	if err != nil {
		return RegisterResult{}, fmt.Errorf("register %s: %w", r.Hostname, err)
	}
	if refusal != nil {
		return RegisterResult{}, refusal
	}
	s.secrets.Store(res.NodeID, secret)
	return res, nil
}

var errRowVanished = errors.New("the registered node was deleted concurrently; try again")

func (s *Store) register(ctx context.Context, r Registration, tok tokenCheck, secret [32]byte, labelsJSON []byte,
	hs, hr, hu, hv *string, facts []byte) (res RegisterResult, refusal, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		refusal = nil
		var phase string
		var oldPhase *string
		err := tx.QueryRow(ctx, registerSQL, r.Hostname, r.MachineID, secret[:], r.ManagementIP,
			r.AgentVersion, r.CPU.Model, r.CPU.Sockets, r.CPU.Cores, r.CPU.Threads, r.MemoryBytes,
			labelsJSON, hs, hr, hu, hv, tok.ok, facts).Scan(&res.NodeID, &res.Kind, &phase, &oldPhase)
		if isNoRows(err) {
			refusal, err = s.refusal(ctx, tx, r, tok)
			return err
		}
		if err != nil {
			return err
		}
		if res.Kind != quantix.RegistrationReregistered && tok.dbID != "" {
			// Consume one use. The row lock serializes concurrent users of the
			// token; a use lost to them rolls the whole registration back.
			tag, err := tx.Exec(ctx, `UPDATE join_tokens SET uses_left = uses_left - 1
				WHERE id = $1 AND uses_left > 0 AND expires_at > now()`, tok.dbID)
			if err != nil {
				return fmt.Errorf("consume join token %s: %w", tok.dbID, err)
			}
			if tag.RowsAffected() == 0 {
				return fmt.Errorf("%w: join token %s was used up or expired by a concurrent registration", ErrUnauthorized, tok.dbID)
			}
		}
		msg := fmt.Sprintf("%s from %s (machine_id %s, agent %s)", res.Kind, r.ManagementIP, r.MachineID, r.AgentVersion)
		if err := addEvent(ctx, tx, res.NodeID, r.Hostname, res.Kind, msg); err != nil {
			return err
		}
		if oldPhase != nil && *oldPhase != phase {
			if err := addEvent(ctx, tx, res.NodeID, r.Hostname, "phase",
				fmt.Sprintf("%s -> %s (%s)", *oldPhase, phase, res.Kind)); err != nil {
				return err
			}
		}
		return nil
	})
	return res, refusal, err
}

// refusal explains a registration the upsert refused, and records refused
// takeovers in the node's history (committed with tx).
func (s *Store) refusal(ctx context.Context, tx pgx.Tx, r Registration, tok tokenCheck) (error, error) {
	var id, machineID string
	err := tx.QueryRow(ctx, `SELECT id, machine_id FROM nodes WHERE hostname = $1`, r.Hostname).Scan(&id, &machineID)
	if isNoRows(err) && tok.ok {
		return errRowVanished, nil
	}
	if isNoRows(err) {
		return fmt.Errorf("%w: hostname %s is not registered and registering a new node needs a valid join token: %s",
			ErrUnauthorized, r.Hostname, tok.reason), nil
	}
	if err != nil {
		return nil, err
	}
	if machineID != r.MachineID {
		msg := fmt.Sprintf("refused takeover from %s: machine_id %s and node_secret differ from the registered node's",
			r.ManagementIP, r.MachineID)
		if err := addEvent(ctx, tx, id, r.Hostname, "takeover_refused", msg); err != nil {
			return nil, err
		}
		return &TakeoverError{NodeID: id, Hostname: r.Hostname}, nil
	}
	return fmt.Errorf("%w: node %s (%s) presented a new node_secret with its machine_id; re-enrolment needs a valid join token: %s",
		ErrUnauthorized, id, r.Hostname, tok.reason), nil
}

func addEvent(ctx context.Context, tx pgx.Tx, nodeID, hostname, kind, msg string) error {
	_, err := tx.Exec(ctx, `INSERT INTO node_events (node_id, hostname, kind, message) VALUES ($1, $2, $3, $4)`,
		nodeID, hostname, kind, msg)
	if err != nil {
		return fmt.Errorf("record %s event for node %s: %w", kind, nodeID, err)
	}
	return nil
}

// Authenticate checks a node's bearer secret against its stored digest in constant
// time. It returns ErrNotFound for an unknown node and ErrUnauthorized for a wrong
// secret.
func (s *Store) Authenticate(ctx context.Context, nodeID, secret string) ([32]byte, error) {
	h := HashSecret(secret)
	if v, ok := s.secrets.Load(nodeID); ok {
		cached := v.([32]byte)
		if SameDigest(cached[:], h[:]) {
			return h, nil
		}
	}
	// Not cached, or the node re-enrolled through another process: read it.
	var stored []byte
	err := s.pool.QueryRow(ctx, `SELECT secret_hash FROM nodes WHERE id = $1`, nodeID).Scan(&stored)
	if isNoRows(err) {
		s.secrets.Delete(nodeID)
		return h, fmt.Errorf("node %s: %w", nodeID, ErrNotFound)
	}
	if err != nil {
		return h, fmt.Errorf("authenticate node %s: %w", nodeID, err)
	}
	var d [32]byte
	copy(d[:], stored)
	s.secrets.Store(nodeID, d)
	if !SameDigest(stored, h[:]) {
		return h, fmt.Errorf("node %s: wrong node_secret: %w", nodeID, ErrUnauthorized)
	}
	return h, nil
}

// forget drops a node from the secret cache.
func (s *Store) forget(nodeID string) { s.secrets.Delete(nodeID) }

const nodeColumns = `n.id, n.hostname, n.machine_id, host(n.management_ip), n.phase, n.last_heartbeat,
    n.registered_at, n.updated_at, n.agent_version,
    n.hypervisor_state, n.hypervisor_reason, n.hypervisor_uri, n.hypervisor_version, n.hypervisor_facts,
    n.cpu_model, n.cpu_sockets, n.cpu_cores, n.cpu_threads, n.memory_bytes,
    n.cpu_percent, n.memory_used_bytes, n.labels, n.os_image, n.os_version, n.os_slots, n.os_upgrade,
    (SELECT count(*) FROM virtual_machines v WHERE v.node_id = n.id AND v.lost_at IS NULL)`

func scanNode(row pgx.Row) (quantix.Node, error) {
	var n quantix.Node
	var hb time.Time
	var cpu quantix.CPUInfo
	var labels map[string]string
	var facts hypervisorFacts
	var os quantix.NodeOS
	err := row.Scan(&n.ID, &n.Hostname, &n.MachineID, &n.ManagementIP, &n.Phase, &hb,
		&n.RegisteredAt, &n.UpdatedAt, &n.AgentVersion,
		&n.Hypervisor.State, &n.Hypervisor.Reason, &n.Hypervisor.URI, &n.Hypervisor.Version, &facts,
		&cpu.Model, &cpu.Sockets, &cpu.Cores, &cpu.Threads, &n.MemoryBytes,
		&n.CPUPercent, &n.MemoryUsedBytes, &labels, &os.Image, &os.Version, &os.Slots, &os.Upgrade, &n.VMCount)
	if err != nil {
		return n, err
	}
	if os.Version != "" {
		n.OS = &os
	}
	n.LastHeartbeat = &hb
	facts.apply(&n.Hypervisor)
	if cpu != (quantix.CPUInfo{}) {
		n.CPU = &cpu
	}
	if len(labels) > 0 {
		n.Labels = labels
	}
	return n, nil
}

// ListNodes returns every node, ordered by hostname.
func (s *Store) ListNodes(ctx context.Context) ([]quantix.Node, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+nodeColumns+` FROM nodes n ORDER BY n.hostname`)
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	nodes, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (quantix.Node, error) { return scanNode(r) })
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	if nodes == nil {
		nodes = []quantix.Node{}
	}
	return nodes, nil
}

// GetNode returns one node or ErrNotFound.
func (s *Store) GetNode(ctx context.Context, id string) (quantix.Node, error) {
	n, err := scanNode(s.pool.QueryRow(ctx, `SELECT `+nodeColumns+` FROM nodes n WHERE n.id = $1`, id))
	if isNoRows(err) {
		return n, fmt.Errorf("node %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return n, fmt.Errorf("get node %s: %w", id, err)
	}
	return n, nil
}

// DeleteNode removes a node and its inventory; its history stays. A node that still
// has managed VMs is a *ConflictError unless force, which deletes those VMs too.
func (s *Store) DeleteNode(ctx context.Context, id string, force bool) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		vms, err := nodeManagedVMs(ctx, tx, id)
		if err != nil {
			return err
		}
		if len(vms) > 0 && !force {
			return conflict("node %s has %d managed VMs (%s): delete them first, or delete the node with ?force=1 to delete them too",
				id, len(vms), vmNames(vms))
		}
		for _, v := range vms {
			if err := vmEvent(ctx, tx, v.uuid, "deleted", "deleted with its node "+id); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `DELETE FROM managed_vms WHERE node_id = $1`, id); err != nil {
			return err
		}
		var hostname string
		err = tx.QueryRow(ctx, `DELETE FROM nodes WHERE id = $1 RETURNING hostname`, id).Scan(&hostname)
		if isNoRows(err) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		return addEvent(ctx, tx, id, hostname, "deleted", "deleted by an admin")
	})
	s.forget(id)
	if err != nil {
		return vmErr("delete node", id, err)
	}
	return nil
}

// NodeEvents returns a node's history, oldest first. A node never seen is
// ErrNotFound; a deleted node keeps its history.
func (s *Store) NodeEvents(ctx context.Context, id string) ([]quantix.NodeEvent, error) {
	return s.NodeEventsTail(ctx, id, 0)
}

// NodeEventsTail is NodeEvents limited to the newest limit entries (0: all), still
// oldest first. The node_events_node_id index gives them without reading the rest.
func (s *Store) NodeEventsTail(ctx context.Context, id string, limit int) ([]quantix.NodeEvent, error) {
	q := `SELECT id, node_id, kind, message, at FROM node_events WHERE node_id = $1 ORDER BY id`
	args := []any{id}
	if limit > 0 {
		q = `SELECT * FROM (SELECT id, node_id, kind, message, at FROM node_events WHERE node_id = $1
			ORDER BY id DESC LIMIT $2) e ORDER BY id`
		args = append(args, limit)
	}
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("node %s events: %w", id, err)
	}
	evs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (quantix.NodeEvent, error) {
		var e quantix.NodeEvent
		err := r.Scan(&e.ID, &e.NodeID, &e.Kind, &e.Message, &e.At)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("node %s events: %w", id, err)
	}
	if len(evs) == 0 {
		if _, err := s.GetNode(ctx, id); err != nil {
			return nil, err
		}
		evs = []quantix.NodeEvent{}
	}
	return evs, nil
}

// SetMaintenance puts a node into maintenance or takes it out; out of maintenance
// its phase follows its last heartbeat again (ready during the start grace).
func (s *Store) SetMaintenance(ctx context.Context, id string, on bool, interval time.Duration, graceUntil time.Time) (quantix.Node, error) {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var hostname, old, phase string
		err := tx.QueryRow(ctx, `
			WITH prev AS (SELECT id, phase FROM nodes WHERE id = $1 FOR UPDATE)
			UPDATE nodes n SET phase = CASE
			        WHEN $2 THEN 'maintenance'
			        WHEN now() < $4 THEN 'ready'
			        ELSE `+phaseByAge("$3")+` END,
			    updated_at = now()
			FROM prev WHERE n.id = prev.id
			RETURNING n.hostname, prev.phase, n.phase`, id, on, interval, graceUntil).Scan(&hostname, &old, &phase)
		if isNoRows(err) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		if old != phase {
			return addEvent(ctx, tx, id, hostname, "phase", fmt.Sprintf("%s -> %s (set by an admin)", old, phase))
		}
		return nil
	})
	if err != nil {
		return quantix.Node{}, fmt.Errorf("node %s maintenance: %w", id, err)
	}
	return s.GetNode(ctx, id)
}

// CountByPhase counts nodes per phase (every phase present, zero or not).
func (s *Store) CountByPhase(ctx context.Context) (map[string]int, error) {
	out := map[string]int{quantix.PhaseReady: 0, quantix.PhaseNotReady: 0, quantix.PhaseDisconnected: 0, quantix.PhaseMaintenance: 0}
	rows, err := s.pool.Query(ctx, `SELECT phase, count(*) FROM nodes GROUP BY phase`)
	if err != nil {
		return nil, fmt.Errorf("count nodes: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var p string
		var c int
		if err := rows.Scan(&p, &c); err != nil {
			return nil, err
		}
		out[p] = c
	}
	return out, rows.Err()
}

// hypervisorFacts is the nodes.hypervisor_facts column: what the agent says of its
// hypervisor besides state, reason, URI and libvirt version.
type hypervisorFacts struct {
	QEMUVersion       string `json:"qemu_version,omitempty"`
	Accelerator       string `json:"accelerator,omitempty"`
	AcceleratorReason string `json:"accelerator_reason,omitempty"`
	Persistent        *bool  `json:"persistent,omitempty"`
}

// hypervisorFactsJSON is the column value for h, nil (keep what is stored) when
// the agent sent no hypervisor.
func hypervisorFactsJSON(h *quantix.Hypervisor) []byte {
	if h == nil {
		return nil
	}
	b, _ := json.Marshal(hypervisorFacts{QEMUVersion: h.QEMUVersion, Accelerator: h.Accelerator,
		AcceleratorReason: h.AcceleratorReason, Persistent: h.Persistent})
	return b
}

func (f hypervisorFacts) apply(h *quantix.Hypervisor) {
	h.QEMUVersion, h.Accelerator, h.AcceleratorReason, h.Persistent = f.QEMUVersion, f.Accelerator, f.AcceleratorReason, f.Persistent
}
