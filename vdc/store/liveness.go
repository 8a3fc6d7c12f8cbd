package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quantix/quantix"
)

// phaseByAge is the phase a node's last heartbeat earns on the database clock
// (docs/design.md §6): ready up to 2 intervals, not_ready up to 3, disconnected beyond.
// iv is the query parameter holding the heartbeat interval, e.g. "$3".
func phaseByAge(iv string) string {
	return `(CASE WHEN n.last_heartbeat >= now() - 2 * ` + iv + `::interval THEN 'ready'
        WHEN n.last_heartbeat >= now() - 3 * ` + iv + `::interval THEN 'not_ready'
        ELSE 'disconnected' END)`
}

// Heartbeat is one authenticated heartbeat (see Authenticate).
type Heartbeat struct {
	NodeID          string
	SecretHash      [32]byte
	ManagementIP    netip.Addr
	CPUPercent      *float64
	MemoryUsedBytes *int64
	Hypervisor      *quantix.Hypervisor
	StateHash       string
	// AppliedGeneration is the desired generation the node last converged to.
	AppliedGeneration int64
	// OS is the node's operating system; nil keeps what is stored.
	OS *quantix.NodeOS
}

// HeartbeatResult answers one heartbeat of a batch.
type HeartbeatResult struct {
	FullSync bool
	// DesiredGeneration is the node's desired generation (docs/design.md §14).
	DesiredGeneration int64
	Err               error // wraps ErrNotFound or ErrUnauthorized; nil when recorded
}

// heartbeatSQL records a batch of heartbeats in one statement (one commit). prev
// locks the rows in id order, so concurrent batches cannot deadlock, and reports the
// phase and address each node had, for the history.
var heartbeatSQL = `
WITH hb AS (
    SELECT * FROM unnest($1::uuid[], $2::bytea[], $3::inet[], $4::float8[], $5::int8[],
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::jsonb[], $11::int8[],
                         $12::text[], $13::text[], $14::text[], $15::jsonb[], $16::jsonb[])
        AS hb(id, secret_hash, ip, cpu, mem, hs, hr, hu, hv, hf, applied, oh, oi, ov, osl, ou)
), prev AS (
    SELECT n.id, n.phase, n.management_ip, n.hypervisor_state, n.os_version FROM nodes n
    JOIN hb ON hb.id = n.id AND hb.secret_hash = n.secret_hash
    ORDER BY n.id FOR UPDATE OF n
), up AS (
    UPDATE nodes n SET
        last_heartbeat = now(),
        management_ip = hb.ip,
        cpu_percent = hb.cpu,
        memory_used_bytes = hb.mem,
        hypervisor_state = coalesce(hb.hs, n.hypervisor_state),
        hypervisor_reason = coalesce(hb.hr, n.hypervisor_reason),
        hypervisor_uri = coalesce(hb.hu, n.hypervisor_uri),
        hypervisor_version = coalesce(hb.hv, n.hypervisor_version),
        hypervisor_facts = coalesce(hb.hf, n.hypervisor_facts),
        applied_generation = hb.applied,
        -- The OS only when it changed (the agent sends it every time): a NodeOS
        -- this vDC saw stored comes as NULLs, one with the stored hash writes nothing.
        os_image = CASE WHEN hb.ov IS NOT NULL AND hb.oh <> n.os_hash THEN hb.oi ELSE n.os_image END,
        os_version = CASE WHEN hb.ov IS NOT NULL AND hb.oh <> n.os_hash THEN hb.ov ELSE n.os_version END,
        os_slots = CASE WHEN hb.ov IS NOT NULL AND hb.oh <> n.os_hash THEN hb.osl ELSE n.os_slots END,
        os_upgrade = CASE WHEN hb.ov IS NOT NULL AND hb.oh <> n.os_hash THEN hb.ou ELSE n.os_upgrade END,
        os_hash = coalesce(hb.oh, n.os_hash),
        phase = CASE WHEN n.phase = 'maintenance' THEN n.phase ELSE 'ready' END
    FROM hb JOIN prev ON prev.id = hb.id
    WHERE n.id = hb.id AND n.secret_hash = hb.secret_hash
    RETURNING n.id, n.secret_hash, n.hostname, prev.phase AS old_phase, n.phase, prev.management_ip AS old_ip,
        n.management_ip AS ip, n.state_hash, n.state_epoch, n.desired_generation,
        prev.hypervisor_state AS old_hs, n.hypervisor_state AS hs, n.hypervisor_reason AS hr,
        prev.os_version AS old_ov, n.os_version AS ov, n.os_hash
), ev AS (
    INSERT INTO node_events (node_id, hostname, kind, message)
    SELECT id, hostname, 'phase', old_phase || ' -> ' || phase || ' (heartbeat)' FROM up
        WHERE old_phase <> phase
    UNION ALL
    SELECT id, hostname, 'management_ip', 'management_ip ' || host(old_ip) || ' -> ' || host(ip) FROM up
        WHERE old_ip <> ip
    UNION ALL
    SELECT id, hostname, 'hypervisor', ` + hypervisorEvent("heartbeat") + ` FROM up
        WHERE hs IS DISTINCT FROM old_hs
    UNION ALL
    SELECT id, hostname, 'os', 'os ' || old_ov || ' -> ' || ov || ' (heartbeat)' FROM up
        WHERE old_ov <> ov AND old_ov <> ''
)
SELECT id::text, secret_hash, state_hash, coalesce(state_epoch::text, ''), desired_generation, os_hash FROM up`

// hypervisorEvent is the SQL text of a 'hypervisor' node event for a row with the
// old state old_hs, the new one hs and its reason hr, learnt via a heartbeat or a
// state: "hypervisor available -> unavailable: connection to libvirt lost (heartbeat)".
func hypervisorEvent(via string) string {
	return `'hypervisor ' || coalesce(old_hs, 'unknown') || ' -> ' || hs ||
        CASE WHEN coalesce(hr, '') <> '' THEN ': ' || hr ELSE '' END || ' (` + via + `)'`
}

// Heartbeats records a batch of heartbeats in one statement and one commit. Every
// result is final: a nil Err means the heartbeat is committed.
func (s *Store) Heartbeats(ctx context.Context, hbs []Heartbeat) ([]HeartbeatResult, error) {
	// One row per node and secret: a node heartbeating twice in a batch keeps
	// the last one. The secret is part of the key so that a heartbeat with a stale
	// secret can neither borrow nor spoil the answer of one with the right secret.
	key := func(id string, secret []byte) string { return id + "/" + string(secret) }
	idx := make(map[string]int, len(hbs))
	var (
		ids            [][16]byte
		secrets        [][]byte
		ips            []netip.Addr
		cpus           []*float64
		mems           []*int64
		hs, hr, hu, hv []*string
		hf             [][]byte
		applied        []int64
		oh, oi, ov     []*string
		osl, ou        [][]byte
	)
	for _, h := range hbs {
		k := key(h.NodeID, h.SecretHash[:])
		j, dup := idx[k]
		if !dup {
			j = len(ids)
			idx[k] = j
			// Binary uuids: pgx cannot send a []string as a binary uuid[] and
			// would fall back to text after a failed (allocating) attempt.
			u, err := parseUUID(h.NodeID)
			if err != nil {
				return nil, fmt.Errorf("heartbeat: node id %q: %w", h.NodeID, err)
			}
			ids = append(ids, u)
			secrets, ips, cpus, mems = append(secrets, nil), append(ips, netip.Addr{}), append(cpus, nil), append(mems, nil)
			hs, hr, hu, hv = append(hs, nil), append(hr, nil), append(hu, nil), append(hv, nil)
			hf = append(hf, nil)
			applied = append(applied, 0)
			oh, oi, ov, osl, ou = append(oh, nil), append(oi, nil), append(ov, nil), append(osl, nil), append(ou, nil)
		}
		applied[j] = h.AppliedGeneration
		sh := h.SecretHash
		secrets[j], ips[j], cpus[j], mems[j] = sh[:], h.ManagementIP, h.CPUPercent, h.MemoryUsedBytes
		if hy := h.Hypervisor; hy != nil {
			hs[j], hr[j], hu[j], hv[j] = &hy.State, &hy.Reason, &hy.URI, &hy.Version
			hf[j] = hypervisorFactsJSON(hy)
		}
		oh[j], oi[j], ov[j], osl[j], ou[j] = nil, nil, nil, nil, nil
		if o := h.OS; o != nil {
			// What the database holds (as last seen here) is not sent at all.
			if hash, slots, up := osColumns(o); !s.osStored(h.NodeID, hash) {
				oh[j], oi[j], ov[j], osl[j], ou[j] = &hash, &o.Image, &o.Version, slots, up
			}
		}
	}
	rows, err := s.pool.Query(ctx, heartbeatSQL, ids, secrets, ips, cpus, mems, hs, hr, hu, hv, hf, applied, oh, oi, ov, osl, ou)
	if err != nil {
		return nil, fmt.Errorf("record %d heartbeats: %w", len(hbs), err)
	}
	type stored struct {
		hash, epoch, os string
		desired         int64
	}
	done := make(map[string]stored, len(ids))
	for rows.Next() {
		var id string
		var secret []byte
		var st stored
		if err := rows.Scan(&id, &secret, &st.hash, &st.epoch, &st.desired, &st.os); err != nil {
			rows.Close()
			return nil, fmt.Errorf("record %d heartbeats: %w", len(hbs), err)
		}
		done[key(id, secret)] = st
		// What the database holds now: a later heartbeat with this OS sends none
		// of it. When another vDC wrote a newer OS, the next heartbeat here
		// differs from it and carries the columns again.
		if st.os != "" {
			s.osHashes.Store(id, st.os)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("record %d heartbeats: %w", len(hbs), err)
	}
	out := make([]HeartbeatResult, len(hbs))
	var missing []string
	for _, h := range hbs {
		if _, ok := done[key(h.NodeID, h.SecretHash[:])]; !ok {
			missing = append(missing, h.NodeID)
		}
	}
	exists := map[string]bool{}
	if len(missing) > 0 {
		// Deleted or re-enrolled since Authenticate: say which.
		rows, err := s.pool.Query(ctx, `SELECT id::text FROM nodes WHERE id = ANY($1::uuid[])`, missing)
		if err != nil {
			return nil, fmt.Errorf("record %d heartbeats: %w", len(hbs), err)
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, fmt.Errorf("record %d heartbeats: %w", len(hbs), err)
		}
		for _, id := range got {
			exists[id] = true
		}
	}
	for i, h := range hbs {
		st, ok := done[key(h.NodeID, h.SecretHash[:])]
		switch {
		case ok:
			out[i].FullSync = st.epoch != s.Epoch() || (h.StateHash != "" && h.StateHash != st.hash)
			out[i].DesiredGeneration = st.desired
		case exists[h.NodeID]:
			out[i].Err = fmt.Errorf("node %s: node_secret changed (re-enrolled?): %w", h.NodeID, ErrUnauthorized)
		default:
			s.forget(h.NodeID)
			out[i].Err = fmt.Errorf("node %s: %w", h.NodeID, ErrNotFound)
		}
	}
	return out, nil
}

// osStored says whether hash is the node's os_hash as the database last returned it.
func (s *Store) osStored(nodeID, hash string) bool {
	last, ok := s.osHashes.Load(nodeID)
	return ok && last.(string) == hash
}

// osColumns is a NodeOS as the heartbeat writes it: its hash (of its JSON) and
// the slots and upgrade progress as jsonb (nil for none).
func osColumns(o *quantix.NodeOS) (hash string, slots, up []byte) {
	b, _ := json.Marshal(o)
	sum := sha256.Sum256(b)
	if o.Slots != nil {
		slots, _ = json.Marshal(o.Slots)
	}
	if o.Upgrade != nil {
		up, _ = json.Marshal(o.Upgrade)
	}
	return hex.EncodeToString(sum[:]), slots, up
}

// parseUUID parses the canonical 8-4-4-4-12 hex form.
func parseUUID(s string) ([16]byte, error) {
	var u [16]byte
	h := strings.ReplaceAll(s, "-", "")
	if len(s) != 36 || len(h) != 32 {
		return u, fmt.Errorf("not a UUID")
	}
	if _, err := hex.Decode(u[:], []byte(h)); err != nil {
		return u, fmt.Errorf("not a UUID: %w", err)
	}
	return u, nil
}

// PhaseChange is one change the sweeper made.
type PhaseChange struct {
	NodeID, Hostname, From, To string
	// Held: the node stopped at not_ready instead of disconnected (mass silence).
	Held bool
}

// MassSilence is the share of nodes (more than half, of at least
// MassSilenceMinNodes) whose silence at once the sweeper takes for the control
// plane's own trouble (its network, its vDCs) rather than the nodes': it holds them
// at not_ready and says why, instead of demoting the fleet to disconnected.
const MassSilenceMinNodes = 3

// Sweep moves nodes to the phase their last heartbeat earns. Before graceUntil
// (after a vDC start, a database failover or a write outage) it only promotes, never
// demotes: the nodes had no chance to reach the control plane. When more than half
// of the nodes (at least MassSilenceMinNodes) would be disconnected at once, those
// stop at not_ready, with the reason in their history. It locks only the rows it
// changes, with SKIP LOCKED: a node whose heartbeat is being recorded is left to
// the next sweep, so the sweeper never waits on (or deadlocks with) heartbeat
// batches, and the locked row is re-checked, so a heartbeat that committed
// meanwhile wins.
func (s *Store) Sweep(ctx context.Context, interval time.Duration, graceUntil time.Time) ([]PhaseChange, error) {
	const rank = `CASE %s WHEN 'ready' THEN 0 WHEN 'not_ready' THEN 1 ELSE 2 END`
	want := phaseByAge("$1")
	q := `
WITH census AS (
    SELECT count(*) AS total, count(*) FILTER (WHERE ` + want + ` = 'disconnected') AS silent
    FROM nodes n WHERE n.phase <> 'maintenance'
), judged AS (
    SELECT n.id, c.silent, c.total,
        (c.total >= ` + fmt.Sprint(MassSilenceMinNodes) + ` AND c.silent * 2 > c.total AND ` + want + ` = 'disconnected') AS held,
        ` + want + ` AS want
    FROM nodes n CROSS JOIN census c
    WHERE n.phase <> 'maintenance'
), cand AS (
    -- n.phase, not the snapshot's phase: FOR UPDATE re-checks a row that changed since the
    -- statement's snapshot against its newest version, so a change another vDC's
    -- sweep committed meanwhile is not made (and recorded) a second time.
    SELECT n.id, n.phase AS old, j.held, j.silent, j.total FROM nodes n JOIN judged j ON j.id = n.id
    WHERE (CASE WHEN j.held THEN 'not_ready' ELSE j.want END) <> n.phase
      AND (now() >= $2 OR ` + fmt.Sprintf(rank, "j.want") + ` < ` + fmt.Sprintf(rank, "n.phase") + `)
    ORDER BY n.id
    FOR UPDATE OF n SKIP LOCKED
), ch AS (
    UPDATE nodes n SET phase = CASE WHEN cand.held AND ` + want + ` = 'disconnected' THEN 'not_ready' ELSE ` + want + ` END
    FROM cand WHERE n.id = cand.id
    RETURNING n.id, n.hostname, cand.old, n.phase AS new, cand.held AND n.phase = 'not_ready' AS held, cand.silent, cand.total,
        round(extract(epoch FROM now() - n.last_heartbeat)::numeric, 1) AS age
), ev AS (
    INSERT INTO node_events (node_id, hostname, kind, message)
    SELECT id, hostname, 'phase', old || ' -> ' || new || ' (last heartbeat ' || age || 's ago' ||
        CASE WHEN held THEN '; held from disconnected: ' || silent || ' of ' || total ||
            ' nodes silent at once, the control plane''s side is the likely cause' ELSE '' END || ')'
    FROM ch WHERE old <> new
)
SELECT id::text, hostname, old, new, held FROM ch WHERE old <> new`
	rows, err := s.pool.Query(ctx, strings.TrimSpace(q), interval, graceUntil)
	if err != nil {
		return nil, fmt.Errorf("sweep phases: %w", err)
	}
	ch, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (PhaseChange, error) {
		var c PhaseChange
		err := r.Scan(&c.NodeID, &c.Hostname, &c.From, &c.To, &c.Held)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("sweep phases: %w", err)
	}
	return ch, nil
}
