package store

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/quantix/quantix"
)

// This file keeps the managed VMs of docs/design.md §14: what the vDC wants on each
// node. Every change of a VM bumps its node's desired generation in the same
// transaction and notifies DesiredChannel, so the node's long-poll (Listener) wakes.

// DesiredChannel is the PostgreSQL NOTIFY channel of desired-generation changes; the
// payload is the node id. Every vDC process sharing the database LISTENs on it.
const DesiredChannel = "quantix_desired"

// MACPrefix is the vendor part of the MACs the vDC assigns to VM NICs.
const MACPrefix = "52:51:58"

// placementLock is the advisory lock (pg_advisory_xact_lock) that serializes
// placement and NIC MAC assignment across every vDC process.
const placementLock = 0x717856 // "qxV"

// ConflictError is a request that contradicts what is stored (409): a name in use,
// no node with room, an image still in use.
type ConflictError struct{ Reason string }

func (e *ConflictError) Error() string { return e.Reason }

func conflict(format string, args ...any) error {
	return &ConflictError{fmt.Sprintf(format, args...)}
}

// MemoryReserve is what placement leaves to the host itself: a tenth of its memory,
// at least 256 MiB.
func MemoryReserve(total int64) int64 { return max(total/10, 256<<20) }

// vmColumns and scanVM read a ManagedVM with its node and its observed state.
const vmColumns = `m.uuid::text, m.name, m.spec, m.wanted, m.force_stop, m.reboot_count, m.generation, m.created_generation,
    m.created_at, m.updated_at, m.node_id::text, n.hostname, n.phase, n.applied_generation, n.state_generation,
    v.power_state, coalesce(v.error, ''), v.lost_at, coalesce(v.lost_reason, '')
FROM managed_vms m JOIN nodes n ON n.id = m.node_id
LEFT JOIN virtual_machines v ON v.node_id = m.node_id AND lower(v.uuid) = m.uuid::text`

func scanVM(row pgx.Row) (quantix.ManagedVM, error) {
	var (
		m          quantix.ManagedVM
		created    int64
		stateGen   int64
		spec       []byte
		phase      string
		power      *string
		vmErr      string
		lostAt     *time.Time
		lostReason string
	)
	err := row.Scan(&m.UUID, &m.Name, &spec, &m.Wanted, &m.ForceStop, &m.RebootCount, &m.Generation, &created,
		&m.CreatedAt, &m.UpdatedAt, &m.NodeID, &m.Hostname, &phase, &m.AppliedGeneration, &stateGen,
		&power, &vmErr, &lostAt, &lostReason)
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(spec, &m.Spec); err != nil {
		return m, fmt.Errorf("vm %s: stored spec: %w", m.UUID, err)
	}
	m.Observed, m.Error = observe(m.Hostname, phase, power, vmErr, lostAt, lostReason)
	if m.Observed == quantix.ObservedPending && stateGen >= created {
		// The node's full state at a generation past the VM's creation lacks it.
		m.Observed, m.Error = quantix.ObservedLost, fmt.Sprintf("node %s applied generation %d but does not report the VM", m.Hostname, stateGen)
	}
	return m, nil
}

// observe is a managed VM's observed state (docs/design.md §14) from its node's
// phase and the node's report of it (power nil: never reported).
func observe(hostname, phase string, power *string, vmErr string, lostAt *time.Time, lostReason string) (string, string) {
	switch {
	case phase == quantix.PhaseNotReady || phase == quantix.PhaseDisconnected:
		return quantix.ObservedUnknown, fmt.Sprintf("node %s is %s", hostname, phase)
	case power == nil:
		return quantix.ObservedPending, ""
	case lostAt != nil:
		return quantix.ObservedLost, lostReason
	case vmErr != "":
		return quantix.ObservedError, vmErr
	}
	return quantix.ObservedFromPower(*power), ""
}

// vmWhere selects a VM by its UUID or name.
func vmWhere(ref string) (string, any) {
	if isUUIDText(ref) {
		return ` WHERE m.uuid = $1::uuid`, strings.ToLower(ref)
	}
	return ` WHERE m.name = $1`, ref
}

func isUUIDText(s string) bool {
	_, err := parseUUID(s)
	return err == nil
}

// ListManagedVMs returns every managed VM by name.
func (s *Store) ListManagedVMs(ctx context.Context) ([]quantix.ManagedVM, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+vmColumns+` ORDER BY m.name`)
	if err != nil {
		return nil, fmt.Errorf("list managed vms: %w", err)
	}
	vms, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (quantix.ManagedVM, error) { return scanVM(r) })
	if err != nil {
		return nil, fmt.Errorf("list managed vms: %w", err)
	}
	if vms == nil {
		vms = []quantix.ManagedVM{}
	}
	return vms, nil
}

// GetVM returns a managed VM by UUID or name, or ErrNotFound.
func (s *Store) GetVM(ctx context.Context, ref string) (quantix.ManagedVM, error) {
	w, arg := vmWhere(ref)
	m, err := scanVM(s.pool.QueryRow(ctx, `SELECT `+vmColumns+w, arg))
	if isNoRows(err) {
		return m, fmt.Errorf("vm %s: %w", ref, ErrNotFound)
	}
	if err != nil {
		return m, fmt.Errorf("get vm %s: %w", ref, err)
	}
	return m, nil
}

// nodeRoom is a node as placement sees it.
type nodeRoom struct {
	id, hostname, phase string
	memory, used        int64
}

func (n nodeRoom) free() int64 { return n.memory - MemoryReserve(n.memory) - n.used }

// why is the reason n cannot take need more bytes, or "".
func (n nodeRoom) why(need int64, explicit bool) string {
	switch {
	case n.phase == quantix.PhaseNotReady || n.phase == quantix.PhaseDisconnected:
		return fmt.Sprintf("%s is %s", n.hostname, n.phase)
	case n.phase == quantix.PhaseMaintenance && !explicit:
		return n.hostname + " in maintenance"
	case n.memory == 0:
		return n.hostname + " has not reported its memory"
	case n.free() < need:
		return fmt.Sprintf("%s %s free", n.hostname, quantix.FormatBytes(max(n.free(), 0)))
	}
	return ""
}

// place picks the node for a VM needing need bytes (docs/design.md §14): the
// explicit node (id or hostname; maintenance allowed, since an operator named it),
// else the ready node with the most free memory that fits. self is the VM being
// changed ("" on create): its own memory does not count against it.
func place(ctx context.Context, tx pgx.Tx, node string, need int64, self string) (nodeRoom, error) {
	rows, err := tx.Query(ctx, `SELECT n.id::text, n.hostname, n.phase, n.memory_bytes,
		    coalesce(sum(m.memory_bytes) FILTER (WHERE m.uuid::text <> $1), 0)::int8
		FROM nodes n LEFT JOIN managed_vms m ON m.node_id = n.id
		GROUP BY n.id ORDER BY n.hostname`, self)
	if err != nil {
		return nodeRoom{}, fmt.Errorf("placement: %w", err)
	}
	nodes, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (nodeRoom, error) {
		var n nodeRoom
		err := r.Scan(&n.id, &n.hostname, &n.phase, &n.memory, &n.used)
		return n, err
	})
	if err != nil {
		return nodeRoom{}, fmt.Errorf("placement: %w", err)
	}
	if node != "" {
		for _, n := range nodes {
			if n.id == strings.ToLower(node) || n.hostname == strings.ToLower(node) {
				if why := n.why(need, true); why != "" {
					return n, conflict("node %s cannot take %s: %s", n.hostname, quantix.FormatBytes(need), why)
				}
				return n, nil
			}
		}
		return nodeRoom{}, &quantix.FieldError{Field: "node", Reason: fmt.Sprintf("no node with id or hostname %q", node)}
	}
	best := -1
	var whys []string
	for i, n := range nodes {
		if why := n.why(need, false); why != "" {
			whys = append(whys, why)
			continue
		}
		if best < 0 || n.free() > nodes[best].free() {
			best = i
		}
	}
	if best >= 0 {
		return nodes[best], nil
	}
	if len(nodes) == 0 {
		return nodeRoom{}, conflict("no node is registered to run a VM of %s", quantix.FormatBytes(need))
	}
	if len(whys) > 10 {
		whys = append(whys[:10], fmt.Sprintf("and %d more", len(whys)-10))
	}
	return nodeRoom{}, conflict("no ready node has %s free: %s", quantix.FormatBytes(need), strings.Join(whys, ", "))
}

// room checks that nodeID has need bytes free for VM self.
func room(ctx context.Context, tx pgx.Tx, nodeID string, need int64, self string) error {
	var n nodeRoom
	err := tx.QueryRow(ctx, `SELECT n.id::text, n.hostname, n.phase, n.memory_bytes,
		    coalesce((SELECT sum(memory_bytes) FROM managed_vms WHERE node_id = n.id AND uuid::text <> $2), 0)::int8
		FROM nodes n WHERE n.id = $1`, nodeID, self).Scan(&n.id, &n.hostname, &n.phase, &n.memory, &n.used)
	if err != nil {
		return fmt.Errorf("room on node %s: %w", nodeID, err)
	}
	switch {
	case n.memory == 0:
		return conflict("node %s cannot take %s: it has not reported its memory", n.hostname, quantix.FormatBytes(need))
	case n.free() < need:
		return conflict("node %s cannot take %s: %s free", n.hostname, quantix.FormatBytes(need), quantix.FormatBytes(max(n.free(), 0)))
	}
	return nil
}

// imageRefs checks the images a spec names.
func imageRefs(ctx context.Context, tx pgx.Tx, spec *quantix.VMSpec) error {
	check := func(field, id string, iso bool) error {
		if !isUUIDText(id) {
			return &quantix.FieldError{Field: field, Reason: fmt.Sprintf("%q is not an image id (a UUID; see GET %s)", id, quantix.PathImages)}
		}
		var format string
		var size int64
		err := tx.QueryRow(ctx, `SELECT format, size_bytes FROM images WHERE id = $1`, id).Scan(&format, &size)
		if isNoRows(err) {
			return &quantix.FieldError{Field: field, Reason: fmt.Sprintf("no image %s", id)}
		}
		if err != nil {
			return fmt.Errorf("image %s: %w", id, err)
		}
		if iso != (format == quantix.ImageISO) {
			want := "a disk image (raw or qcow2)"
			if iso {
				want = "an iso image"
			}
			return &quantix.FieldError{Field: field, Reason: fmt.Sprintf("image %s is %s, want %s", id, format, want)}
		}
		return nil
	}
	for i, d := range spec.Disks {
		if d.ImageID == "" {
			continue
		}
		d.ImageID = strings.ToLower(d.ImageID)
		spec.Disks[i] = d
		if err := check(fmt.Sprintf("disks[%d].image_id", i), d.ImageID, false); err != nil {
			return err
		}
	}
	if spec.CDROM != "" {
		spec.CDROM = strings.ToLower(spec.CDROM)
		return check("cdrom_image_id", spec.CDROM, true)
	}
	return nil
}

// assignMACs fills in the MACs of spec's NICs: the one given (unique across the
// vDC), else the MAC the VM's NIC of that index had (old), else a new random one.
// The placement lock makes the uniqueness check race-free.
func assignMACs(ctx context.Context, tx pgx.Tx, spec *quantix.VMSpec, old []quantix.NICSpec, self string) error {
	seen := map[string]bool{}
	for i := range spec.NICs {
		n := &spec.NICs[i]
		if n.MAC == "" && i < len(old) {
			n.MAC = old[i].MAC
		}
		given := n.MAC != ""
		for try := 0; ; try++ {
			if !given {
				var b [3]byte
				rand.Read(b[:])
				n.MAC = fmt.Sprintf("%s:%02x:%02x:%02x", MACPrefix, b[0], b[1], b[2])
			}
			n.MAC = strings.ToLower(n.MAC)
			var owner string
			err := tx.QueryRow(ctx, `SELECT m.name FROM vm_nics x JOIN managed_vms m ON m.uuid = x.vm_uuid
				WHERE x.mac = $1 AND x.vm_uuid::text <> $2`, n.MAC, self).Scan(&owner)
			if err != nil && !isNoRows(err) {
				return fmt.Errorf("check mac %s: %w", n.MAC, err)
			}
			taken := err == nil || seen[n.MAC]
			if !taken {
				break
			}
			if given {
				if owner == "" {
					owner = "another NIC of this VM"
				} else {
					owner = "VM " + owner
				}
				return &quantix.FieldError{Field: fmt.Sprintf("nics[%d].mac", i), Reason: fmt.Sprintf("%s is already used by %s", n.MAC, owner)}
			}
			if try == 100 {
				return fmt.Errorf("no free MAC under %s after %d tries", MACPrefix, try)
			}
		}
		seen[n.MAC] = true
	}
	return nil
}

// writeParts replaces a VM's disk and NIC rows with spec's.
func writeParts(ctx context.Context, tx pgx.Tx, vm string, spec *quantix.VMSpec) error {
	if _, err := tx.Exec(ctx, `DELETE FROM vm_disks WHERE vm_uuid = $1`, vm); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM vm_nics WHERE vm_uuid = $1`, vm); err != nil {
		return err
	}
	for i, d := range spec.Disks {
		var img *string
		if d.ImageID != "" {
			img = &d.ImageID
		}
		if _, err := tx.Exec(ctx, `INSERT INTO vm_disks (vm_uuid, idx, size_bytes, image_id) VALUES ($1, $2, $3, $4)`,
			vm, i, d.SizeBytes, img); err != nil {
			return fmt.Errorf("disks[%d]: %w", i, err)
		}
	}
	for i, n := range spec.NICs {
		if _, err := tx.Exec(ctx, `INSERT INTO vm_nics (vm_uuid, idx, network, mac) VALUES ($1, $2, $3, $4)`,
			vm, i, n.Network, n.MAC); err != nil {
			return fmt.Errorf("nics[%d]: %w", i, err)
		}
	}
	return nil
}

// bump raises a node's desired generation and notifies its long-polls at commit.
func bump(ctx context.Context, tx pgx.Tx, nodeID string) (int64, error) {
	var gen int64
	err := tx.QueryRow(ctx, `UPDATE nodes SET desired_generation = desired_generation + 1 WHERE id = $1
		RETURNING desired_generation`, nodeID).Scan(&gen)
	if err != nil {
		return 0, fmt.Errorf("bump desired generation of node %s: %w", nodeID, err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, DesiredChannel, nodeID); err != nil {
		return 0, fmt.Errorf("notify node %s: %w", nodeID, err)
	}
	return gen, nil
}

func vmEvent(ctx context.Context, tx pgx.Tx, vm, kind, msg string) error {
	if _, err := tx.Exec(ctx, `INSERT INTO vm_events (vm_uuid, kind, message) VALUES ($1, $2, $3)`, vm, kind, msg); err != nil {
		return fmt.Errorf("record %s event of vm %s: %w", kind, vm, err)
	}
	return nil
}

func lockPlacement(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, placementLock); err != nil {
		return fmt.Errorf("placement lock: %w", err)
	}
	return nil
}

// nameTaken is the conflict for a VM name in use.
func nameTaken(ctx context.Context, tx pgx.Tx, name, self string) error {
	var other string
	err := tx.QueryRow(ctx, `SELECT uuid::text FROM managed_vms WHERE name = $1 AND uuid::text <> $2`, name, self).Scan(&other)
	if isNoRows(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check name %s: %w", name, err)
	}
	return conflict("a VM named %s exists already (%s)", name, other)
}

// uniqueViolation maps a unique-index error (a race the checks above did not
// serialize) to a conflict.
func uniqueViolation(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23505" {
		return conflict("%s", pe.Detail)
	}
	return err
}

// CreateVM validates, places and stores a new managed VM. Bad input is a
// *quantix.FieldError, a name in use or no room a *ConflictError; either way
// nothing is stored.
func (s *Store) CreateVM(ctx context.Context, c quantix.VMCreate) (quantix.ManagedVM, error) {
	spec := c.VMSpec
	if err := spec.Validate(); err != nil {
		return quantix.ManagedVM{}, err
	}
	power := c.Power
	switch power {
	case "":
		power = quantix.WantedRunning
	case quantix.WantedRunning, quantix.WantedStopped:
	default:
		return quantix.ManagedVM{}, &quantix.FieldError{Field: "power", Reason: fmt.Sprintf("%q is neither running nor stopped", power)}
	}
	id := NewEpoch()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := lockPlacement(ctx, tx); err != nil {
			return err
		}
		if err := nameTaken(ctx, tx, spec.Name, ""); err != nil {
			return err
		}
		if err := imageRefs(ctx, tx, &spec); err != nil {
			return err
		}
		n, err := place(ctx, tx, c.Node, spec.MemoryBytes, "")
		if err != nil {
			return err
		}
		if err := assignMACs(ctx, tx, &spec, nil, id); err != nil {
			return err
		}
		gen, err := bump(ctx, tx, n.id)
		if err != nil {
			return err
		}
		specJSON, _ := json.Marshal(spec)
		if _, err := tx.Exec(ctx, `INSERT INTO managed_vms (uuid, name, node_id, spec, memory_bytes, cdrom_image_id,
			    wanted, generation, created_generation)
			VALUES ($1, $2, $3, $4, $5, nullif($6, '')::uuid, $7, $8, $8)`,
			id, spec.Name, n.id, specJSON, spec.MemoryBytes, spec.CDROM, power, gen); err != nil {
			return uniqueViolation(err)
		}
		if err := writeParts(ctx, tx, id, &spec); err != nil {
			return uniqueViolation(err)
		}
		return vmEvent(ctx, tx, id, "created", fmt.Sprintf("created on %s (%d vCPUs, %s), wanted %s",
			n.hostname, spec.VCPUs, quantix.FormatBytes(spec.MemoryBytes), power))
	})
	if err != nil {
		return quantix.ManagedVM{}, vmErr("create vm", spec.Name, err)
	}
	return s.GetVM(ctx, id)
}

// vmErr wraps err unless it is one the API shows as it is.
func vmErr(op, ref string, err error) error {
	if err == nil {
		return nil
	}
	var fe *quantix.FieldError
	var ce *ConflictError
	if errors.As(err, &fe) || errors.As(err, &ce) {
		return err
	}
	return fmt.Errorf("%s %s: %w", op, ref, err)
}

// lockedVM is a VM row locked for a change.
type lockedVM struct {
	uuid, name, node, wanted string
	spec                     quantix.VMSpec
}

func lockVM(ctx context.Context, tx pgx.Tx, ref string) (lockedVM, error) {
	w, arg := vmWhere(ref)
	var v lockedVM
	var spec []byte
	err := tx.QueryRow(ctx, `SELECT m.uuid::text, m.name, m.node_id::text, m.wanted, m.spec FROM managed_vms m`+w+` FOR UPDATE`, arg).
		Scan(&v.uuid, &v.name, &v.node, &v.wanted, &spec)
	if isNoRows(err) {
		return v, fmt.Errorf("vm %s: %w", ref, ErrNotFound)
	}
	if err != nil {
		return v, err
	}
	return v, json.Unmarshal(spec, &v.spec)
}

// UpdateVM changes a VM's spec: change edits a copy of the stored one (a JSON merge
// patch, for instance), which is then validated like a new VM's. The VM stays on its
// node, which must have room for more memory.
func (s *Store) UpdateVM(ctx context.Context, ref string, change func(*quantix.VMSpec) error) (quantix.ManagedVM, error) {
	var id string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := lockPlacement(ctx, tx); err != nil {
			return err
		}
		v, err := lockVM(ctx, tx, ref)
		if err != nil {
			return err
		}
		id = v.uuid
		spec := v.spec
		spec.Disks = append([]quantix.DiskSpec(nil), v.spec.Disks...)
		spec.NICs = nil
		for _, n := range v.spec.NICs {
			spec.NICs = append(spec.NICs, quantix.NICSpec{Network: n.Network, MAC: n.MAC})
		}
		if err := change(&spec); err != nil {
			return err
		}
		if err := spec.Validate(); err != nil {
			return err
		}
		if err := nameTaken(ctx, tx, spec.Name, v.uuid); err != nil {
			return err
		}
		if err := imageRefs(ctx, tx, &spec); err != nil {
			return err
		}
		// More memory needs room on its node; the node's phase does not matter
		// (a spec can change while the node is away: it converges when back).
		if spec.MemoryBytes > v.spec.MemoryBytes {
			if err := room(ctx, tx, v.node, spec.MemoryBytes, v.uuid); err != nil {
				return err
			}
		}
		if err := assignMACs(ctx, tx, &spec, v.spec.NICs, v.uuid); err != nil {
			return err
		}
		gen, err := bump(ctx, tx, v.node)
		if err != nil {
			return err
		}
		specJSON, _ := json.Marshal(spec)
		if _, err := tx.Exec(ctx, `UPDATE managed_vms SET name = $2, spec = $3, memory_bytes = $4,
			    cdrom_image_id = nullif($5, '')::uuid, generation = $6, updated_at = now() WHERE uuid = $1`,
			v.uuid, spec.Name, specJSON, spec.MemoryBytes, spec.CDROM, gen); err != nil {
			return uniqueViolation(err)
		}
		if err := writeParts(ctx, tx, v.uuid, &spec); err != nil {
			return uniqueViolation(err)
		}
		return vmEvent(ctx, tx, v.uuid, "updated", fmt.Sprintf("spec changed (%d vCPUs, %s, %d disks, %d NICs)",
			spec.VCPUs, quantix.FormatBytes(spec.MemoryBytes), len(spec.Disks), len(spec.NICs)))
	})
	if err != nil {
		return quantix.ManagedVM{}, vmErr("update vm", ref, err)
	}
	return s.GetVM(ctx, id)
}

// VMAction applies a power action (quantix.VMAction*) to a VM's wanted state.
func (s *Store) VMAction(ctx context.Context, ref, action string) (quantix.ManagedVM, error) {
	set := map[string]string{
		quantix.VMActionStart:    `wanted = 'running', force_stop = false`,
		quantix.VMActionStop:     `wanted = 'stopped', force_stop = false`,
		quantix.VMActionForceOff: `wanted = 'stopped', force_stop = true`,
		quantix.VMActionReboot:   `reboot_count = reboot_count + 1`,
	}[action]
	if set == "" {
		return quantix.ManagedVM{}, &quantix.FieldError{Field: "action", Reason: fmt.Sprintf("%q is not one of start, stop, force-off, reboot", action)}
	}
	var id string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		v, err := lockVM(ctx, tx, ref)
		if err != nil {
			return err
		}
		id = v.uuid
		if action == quantix.VMActionReboot && v.wanted != quantix.WantedRunning {
			return conflict("vm %s is wanted %s: start it instead of rebooting it", v.name, v.wanted)
		}
		gen, err := bump(ctx, tx, v.node)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE managed_vms SET `+set+`, generation = $2, updated_at = now() WHERE uuid = $1`, v.uuid, gen); err != nil {
			return err
		}
		return vmEvent(ctx, tx, v.uuid, "action", action)
	})
	if err != nil {
		return quantix.ManagedVM{}, vmErr("vm "+action, ref, err)
	}
	return s.GetVM(ctx, id)
}

// DeleteVM deletes a managed VM; its node undefines it (removing its disks unless
// keepDisks) when it next converges.
func (s *Store) DeleteVM(ctx context.Context, ref string, keepDisks bool) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		v, err := lockVM(ctx, tx, ref)
		if err != nil {
			return err
		}
		return deleteVM(ctx, tx, v.uuid, v.name, v.node, keepDisks, "deleted")
	})
	return vmErr("delete vm", ref, err)
}

func deleteVM(ctx context.Context, tx pgx.Tx, id, name, node string, keepDisks bool, why string) error {
	gen, err := bump(ctx, tx, node)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM managed_vms WHERE uuid = $1`, id); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO vm_tombstones (uuid, name, node_id, keep_disks, generation) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (uuid) DO UPDATE SET keep_disks = excluded.keep_disks, generation = excluded.generation`,
		id, name, node, keepDisks, gen); err != nil {
		return err
	}
	if keepDisks {
		why += ", disks kept"
	}
	return vmEvent(ctx, tx, id, "deleted", why)
}

// VMEvents is a VM's history, oldest first (a deleted VM's too, by UUID).
func (s *Store) VMEvents(ctx context.Context, ref string) ([]quantix.VMEvent, error) {
	id := strings.ToLower(ref)
	if !isUUIDText(ref) {
		v, err := s.GetVM(ctx, ref)
		if err != nil {
			return nil, err
		}
		id = v.UUID
	}
	rows, err := s.pool.Query(ctx, `SELECT id, kind, message, at FROM vm_events WHERE vm_uuid = $1 ORDER BY id`, id)
	if err != nil {
		return nil, fmt.Errorf("vm %s events: %w", ref, err)
	}
	evs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (quantix.VMEvent, error) {
		var e quantix.VMEvent
		err := r.Scan(&e.ID, &e.Kind, &e.Message, &e.At)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("vm %s events: %w", ref, err)
	}
	if len(evs) == 0 {
		return nil, fmt.Errorf("vm %s: %w", ref, ErrNotFound)
	}
	return evs, nil
}

// DesiredGeneration is a node's desired generation.
func (s *Store) DesiredGeneration(ctx context.Context, nodeID string) (int64, error) {
	var gen int64
	err := s.pool.QueryRow(ctx, `SELECT desired_generation FROM nodes WHERE id = $1`, nodeID).Scan(&gen)
	if isNoRows(err) {
		return 0, fmt.Errorf("node %s: %w", nodeID, ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("desired generation of node %s: %w", nodeID, err)
	}
	return gen, nil
}

// Desired is everything the vDC wants on a node, read in one snapshot.
func (s *Store) Desired(ctx context.Context, nodeID string) (quantix.NodeDesired, error) {
	var d quantix.NodeDesired
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `SELECT desired_generation FROM nodes WHERE id = $1`, nodeID).Scan(&d.Generation)
		if isNoRows(err) {
			return fmt.Errorf("node %s: %w", nodeID, ErrNotFound)
		}
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT uuid::text, spec, wanted, force_stop, reboot_count, generation
			FROM managed_vms WHERE node_id = $1 ORDER BY name`, nodeID)
		if err != nil {
			return err
		}
		d.VMs, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (quantix.DesiredVM, error) {
			var v quantix.DesiredVM
			var spec []byte
			if err := r.Scan(&v.UUID, &spec, &v.Power, &v.ForceStop, &v.RebootCount, &v.Generation); err != nil {
				return v, err
			}
			return v, json.Unmarshal(spec, &v.Spec)
		})
		if err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT uuid::text, keep_disks FROM vm_tombstones WHERE node_id = $1 ORDER BY uuid`, nodeID)
		if err != nil {
			return err
		}
		d.Deleted, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (quantix.DeletedVM, error) {
			var v quantix.DeletedVM
			err := r.Scan(&v.UUID, &v.KeepDisks)
			return v, err
		})
		if err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT id::text, format, size_bytes, sha256 FROM images WHERE id IN (
			    SELECT d.image_id FROM vm_disks d JOIN managed_vms m ON m.uuid = d.vm_uuid WHERE m.node_id = $1
			    UNION SELECT cdrom_image_id FROM managed_vms WHERE node_id = $1) ORDER BY id`, nodeID)
		if err != nil {
			return err
		}
		d.Images, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (quantix.DesiredImage, error) {
			var i quantix.DesiredImage
			err := r.Scan(&i.ID, &i.Format, &i.SizeBytes, &i.SHA256)
			return i, err
		})
		if err != nil {
			return err
		}
		d.Upgrade, err = desiredUpgrade(ctx, tx, nodeID)
		return err
	})
	if err != nil {
		return d, fmt.Errorf("desired state of node %s: %w", nodeID, err)
	}
	if d.VMs == nil {
		d.VMs = []quantix.DesiredVM{}
	}
	return d, nil
}

// PutConsole keeps the newest console output of a managed VM of nodeID.
func (s *Store) PutConsole(ctx context.Context, nodeID, vmUUID string, data []byte) error {
	tag, err := s.pool.Exec(ctx, `INSERT INTO vm_consoles (vm_uuid, data)
		SELECT uuid, $3 FROM managed_vms WHERE uuid = $1 AND node_id = $2
		ON CONFLICT (vm_uuid) DO UPDATE SET data = excluded.data, updated_at = now()`, strings.ToLower(vmUUID), nodeID, data)
	if err != nil {
		return fmt.Errorf("console of vm %s: %w", vmUUID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("vm %s is not a managed VM of node %s: %w", vmUUID, nodeID, ErrNotFound)
	}
	return nil
}

// Console returns a VM's newest console output and when its node sent it (zero
// time and no bytes before the first).
func (s *Store) Console(ctx context.Context, ref string) ([]byte, time.Time, error) {
	v, err := s.GetVM(ctx, ref)
	if err != nil {
		return nil, time.Time{}, err
	}
	var data []byte
	var at time.Time
	err = s.pool.QueryRow(ctx, `SELECT data, updated_at FROM vm_consoles WHERE vm_uuid = $1`, v.UUID).Scan(&data, &at)
	if err != nil && !isNoRows(err) {
		return nil, at, fmt.Errorf("console of vm %s: %w", ref, err)
	}
	return data, at, nil
}

// nodeManagedVMs locks the managed VMs of a node (DeleteNode refuses while there are).
func nodeManagedVMs(ctx context.Context, tx pgx.Tx, nodeID string) ([]lockedVM, error) {
	rows, err := tx.Query(ctx, `SELECT uuid::text, name FROM managed_vms WHERE node_id = $1 ORDER BY name FOR UPDATE`, nodeID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (lockedVM, error) {
		v := lockedVM{node: nodeID}
		err := r.Scan(&v.uuid, &v.name)
		return v, err
	})
}

func vmNames(vms []lockedVM) string {
	names := make([]string, len(vms))
	for i, v := range vms {
		names[i] = v.name
	}
	sort.Strings(names)
	if len(names) > 10 {
		names = append(names[:10], "...")
	}
	return strings.Join(names, ", ")
}
