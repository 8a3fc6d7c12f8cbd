package store

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/upgrade"
)

// This file keeps the upgrades delivered by the vDC (docs/design.md §16, upgrades.go
// in the root package): verified releases (their files are in data_dir, named by
// ReleaseDir), rolling upgrade jobs, and the step that drives a job one node at a
// time. A node's DesiredUpgrade is not stored: Desired derives it from the job's
// node row (staging: stage only; activating: stage and reboot), so finishing,
// failing or cancelling a node takes it away with the same write.

// RefusedError is a request the rules refuse (422), one reason per node or rule.
type RefusedError struct{ Reasons []string }

func (e *RefusedError) Error() string {
	return "upgrade refused: " + strings.Join(e.Reasons, "; ")
}

// ReleaseDir is the folder of a release's files inside data_dir.
func ReleaseDir(id string) string { return "releases/" + id }

const releaseColumns = `r.id::text, r.image, r.version, r.signed_by, r.files, r.created_at FROM releases r`

func scanRelease(row pgx.Row) (quantix.Release, error) {
	var r quantix.Release
	err := row.Scan(&r.ID, &r.Image, &r.Version, &r.SignedBy, &r.Files, &r.CreatedAt)
	return r, err
}

// AddRelease stores a verified release whose files are in ReleaseDir(r.ID). A
// release of the same image and version is a *ConflictError.
func (s *Store) AddRelease(ctx context.Context, r quantix.Release) (quantix.Release, error) {
	files, _ := json.Marshal(r.Files)
	_, err := s.pool.Exec(ctx, `INSERT INTO releases (id, image, version, signed_by, files) VALUES ($1, $2, $3, $4, $5)`,
		r.ID, r.Image, r.Version, r.SignedBy, files)
	if err := uniqueViolation(err); err != nil {
		return r, vmErr("add release", r.ID, err)
	}
	return s.GetRelease(ctx, r.ID)
}

// ReleaseOf returns the release of image and version, or ErrNotFound.
func (s *Store) ReleaseOf(ctx context.Context, image, version string) (quantix.Release, error) {
	return s.GetRelease(ctx, image+"-"+version)
}

// ListReleases returns the releases, newest first.
func (s *Store) ListReleases(ctx context.Context) ([]quantix.Release, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+releaseColumns+` ORDER BY r.created_at DESC, r.id`)
	if err != nil {
		return nil, fmt.Errorf("list releases: %w", err)
	}
	rs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (quantix.Release, error) { return scanRelease(r) })
	if err != nil {
		return nil, fmt.Errorf("list releases: %w", err)
	}
	if rs == nil {
		rs = []quantix.Release{}
	}
	return rs, nil
}

// releaseWhere selects a release by its id or "<image>-<version>".
func releaseWhere(ref string) (string, any) {
	if isUUIDText(ref) {
		return ` WHERE r.id = $1::uuid`, strings.ToLower(ref)
	}
	return ` WHERE r.image || '-' || r.version = $1`, ref
}

// GetRelease returns a release by id or "<image>-<version>", or ErrNotFound.
func (s *Store) GetRelease(ctx context.Context, ref string) (quantix.Release, error) {
	w, arg := releaseWhere(ref)
	r, err := scanRelease(s.pool.QueryRow(ctx, `SELECT `+releaseColumns+w, arg))
	if isNoRows(err) {
		return r, fmt.Errorf("release %s: %w", ref, ErrNotFound)
	}
	if err != nil {
		return r, fmt.Errorf("get release %s: %w", ref, err)
	}
	return r, nil
}

// DeleteRelease removes a release's row and returns it (the caller removes its
// files). A release a running upgrade uses is a *ConflictError.
func (s *Store) DeleteRelease(ctx context.Context, ref string) (quantix.Release, error) {
	var r quantix.Release
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		w, arg := releaseWhere(ref)
		var err error
		r, err = scanRelease(tx.QueryRow(ctx, `SELECT `+releaseColumns+w+` FOR UPDATE`, arg))
		if isNoRows(err) {
			return fmt.Errorf("release %s: %w", ref, ErrNotFound)
		}
		if err != nil {
			return err
		}
		var job string
		err = tx.QueryRow(ctx, `SELECT id::text FROM upgrades WHERE release_id = $1 AND state = 'running'`, r.ID).Scan(&job)
		if err == nil {
			return conflict("release %s %s is used by the running upgrade %s: cancel it first", r.Image, r.Version, job)
		}
		if !isNoRows(err) {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM releases WHERE id = $1`, r.ID)
		return err
	})
	return r, vmErr("delete release", ref, err)
}

// UpgradeRules are what StartUpgrade checks besides each node's state.
type UpgradeRules struct {
	// VDCVersion is the vDC's own version: no node goes past it (the
	// version-skew rule). A version that is not MAJOR.MINOR.PATCH (a "dev"
	// build) does not limit anything.
	VDCVersion string
}

// StartUpgrade checks a rolling upgrade against the rules and stores it; the
// driver (StepUpgrade) runs it. A refused request is a *RefusedError naming every
// reason, another running upgrade a *ConflictError; either way nothing is stored.
func (s *Store) StartUpgrade(ctx context.Context, req quantix.UpgradeRequest, rules UpgradeRules) (quantix.Upgrade, error) {
	switch {
	case req.Release == "":
		return quantix.Upgrade{}, &quantix.FieldError{Field: "release", Reason: "is empty: name the release (its id or <image>-<version>)"}
	case req.All && len(req.Nodes) > 0:
		return quantix.Upgrade{}, &quantix.FieldError{Field: "nodes", Reason: "give nodes or all, not both"}
	case !req.All && len(req.Nodes) == 0:
		return quantix.Upgrade{}, &quantix.FieldError{Field: "nodes", Reason: "is empty: list the nodes (ids or hostnames) or set all"}
	}
	activate := req.Activate == nil || *req.Activate
	id := NewEpoch()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := noUpgradeRunning(ctx, tx, "one rolling upgrade at a time"); err != nil {
			return err
		}
		rel, err := shareRelease(ctx, tx, req.Release)
		if err != nil {
			return err
		}
		var refused []string
		if why := imageRefusal(rel, quantix.ImageQuantixOS, "nodes run"); why != "" {
			refused = append(refused, why)
		}
		if c, err := upgrade.CompareVersions(rel.Version, rules.VDCVersion); err == nil && c > 0 {
			refused = append(refused, fmt.Sprintf("version %s is newer than this vDC's %s: upgrade the vDCs first (nodes never run a newer release than their vDC)",
				rel.Version, rules.VDCVersion))
		}
		nodes, bad, err := upgradeTargets(ctx, tx, req)
		if err != nil {
			return err
		}
		refused = append(refused, bad...)
		skipped := 0
		for i := range nodes {
			n := &nodes[i]
			if why := n.refusal(rel.Version); why != "" {
				refused = append(refused, "node "+n.hostname+": "+why)
			}
			if n.version == rel.Version {
				n.skip = true
				skipped++
			}
		}
		if len(refused) > 0 {
			return &RefusedError{Reasons: refused}
		}
		if skipped == len(nodes) {
			return conflict("every node named runs %s %s already: nothing to do", rel.Image, rel.Version)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO upgrades (id, release_id, image, version, activate, state) VALUES ($1, $2, $3, $4, $5, 'running')`,
			id, rel.ID, rel.Image, rel.Version, activate); err != nil {
			return uniqueViolation(err)
		}
		for i, n := range nodes {
			phase := quantix.UpgradeNodePending
			if n.skip {
				phase = quantix.UpgradeNodeSkipped
			}
			if _, err := tx.Exec(ctx, `INSERT INTO upgrade_nodes (upgrade_id, idx, node_id, hostname, from_version, phase, finished_at)
				VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $6 = 'skipped' THEN now() END)`, id, i, n.id, n.hostname, n.version, phase); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		var re *RefusedError
		if errors.As(err, &re) {
			return quantix.Upgrade{}, re
		}
		return quantix.Upgrade{}, vmErr("start upgrade of release", req.Release, err)
	}
	return s.GetUpgrade(ctx, id)
}

// target is a node a request names, as StartUpgrade judges it.
type target struct {
	id, hostname, phase, version string
	slots                        bool
	skip                         bool
}

// refusal says why the node cannot go to version, or "".
func (n target) refusal(version string) string {
	switch {
	case n.phase != quantix.PhaseReady:
		return fmt.Sprintf("is %s, not ready", n.phase)
	case n.version == "":
		return "has not reported its operating system (an agent without upgrades?)"
	case !n.slots:
		return fmt.Sprintf("runs %s from a live boot (no A/B slots): install it to disk to upgrade it", n.version)
	}
	return versionRefusal(n.version, version)
}

// versionRefusal says why a machine running version running cannot go to
// version, or "": the same version is no refusal (the caller skips it, or has
// nothing to do).
func versionRefusal(running, version string) string {
	if running == version {
		return ""
	}
	c, err := upgrade.CompareVersions(version, running)
	switch {
	case err != nil:
		return fmt.Sprintf("runs %s: %v", running, err)
	case c < 0:
		return fmt.Sprintf("runs %s, newer than %s: an upgrade never goes back", running, version)
	}
	return ""
}

// imageRefusal says why rel cannot go onto machines of image ("nodes run"
// image), or "".
func imageRefusal(rel quantix.Release, image, who string) string {
	if rel.Image == image {
		return ""
	}
	return fmt.Sprintf("release %s is a %s %s bundle: %s %s", rel.ID, rel.Image, rel.Version, who, image)
}

// noUpgradeRunning is a *ConflictError while a rolling upgrade of the nodes runs.
func noUpgradeRunning(ctx context.Context, tx pgx.Tx, why string) error {
	var running string
	err := tx.QueryRow(ctx, `SELECT id::text FROM upgrades WHERE state = 'running'`).Scan(&running)
	if err == nil {
		return conflict("upgrade %s is running: wait for it to finish or cancel it (%s)", running, why)
	}
	if !isNoRows(err) {
		return err
	}
	return nil
}

// shareRelease reads the release ref names, locked against its deletion until
// tx ends; ErrNotFound when there is none.
func shareRelease(ctx context.Context, tx pgx.Tx, ref string) (quantix.Release, error) {
	w, arg := releaseWhere(ref)
	rel, err := scanRelease(tx.QueryRow(ctx, `SELECT `+releaseColumns+w+` FOR SHARE`, arg))
	if isNoRows(err) {
		return rel, fmt.Errorf("release %s: %w", ref, ErrNotFound)
	}
	return rel, err
}

// upgradeTargets resolves the request's nodes (ids or hostnames, or all by
// hostname), with a reason for each it cannot find.
func upgradeTargets(ctx context.Context, tx pgx.Tx, req quantix.UpgradeRequest) ([]target, []string, error) {
	const cols = `SELECT id::text, hostname, phase, os_version, os_slots IS NOT NULL FROM nodes`
	scan := func(r pgx.CollectableRow) (target, error) {
		var t target
		err := r.Scan(&t.id, &t.hostname, &t.phase, &t.version, &t.slots)
		return t, err
	}
	if req.All {
		rows, err := tx.Query(ctx, cols+` ORDER BY hostname`)
		if err != nil {
			return nil, nil, err
		}
		ts, err := pgx.CollectRows(rows, scan)
		if err == nil && len(ts) == 0 {
			return nil, []string{"no nodes are registered"}, nil
		}
		return ts, nil, err
	}
	var ts []target
	var bad []string
	seen := map[string]bool{}
	for _, ref := range req.Nodes {
		q, arg := cols+` WHERE hostname = $1`, any(strings.ToLower(ref))
		if isUUIDText(ref) {
			q = cols + ` WHERE id = $1::uuid`
		}
		rows, err := tx.Query(ctx, q, arg)
		if err != nil {
			return nil, nil, err
		}
		got, err := pgx.CollectRows(rows, scan)
		if err != nil {
			return nil, nil, err
		}
		switch {
		case len(got) == 0:
			bad = append(bad, fmt.Sprintf("node %s: not registered", ref))
		case seen[got[0].id]:
			bad = append(bad, fmt.Sprintf("node %s: named twice", ref))
		default:
			seen[got[0].id] = true
			ts = append(ts, got[0])
		}
	}
	return ts, bad, nil
}

const upgradeColumns = `u.id::text, coalesce(u.release_id::text, ''), u.image, u.version, u.activate, u.state,
    coalesce(u.current_node::text, ''), u.reason, u.created_at, u.updated_at, u.finished_at FROM upgrades u`

func scanUpgrade(row pgx.Row) (quantix.Upgrade, error) {
	var u quantix.Upgrade
	err := row.Scan(&u.ID, &u.Release, &u.Image, &u.Version, &u.Activate, &u.State, &u.CurrentNode, &u.Reason,
		&u.CreatedAt, &u.UpdatedAt, &u.FinishedAt)
	return u, err
}

// upgradeNodes fills in the nodes of the given upgrades.
func (s *Store) upgradeNodes(ctx context.Context, us []quantix.Upgrade) error {
	if len(us) == 0 {
		return nil
	}
	ids := make([]string, len(us))
	at := map[string]int{}
	for i, u := range us {
		ids[i], at[u.ID] = u.ID, i
		us[i].Nodes = []quantix.UpgradeNode{}
	}
	rows, err := s.pool.Query(ctx, `SELECT upgrade_id::text, node_id::text, hostname, from_version, phase, error, started_at, finished_at
		FROM upgrade_nodes WHERE upgrade_id = ANY($1::uuid[]) ORDER BY upgrade_id, idx`, ids)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var n quantix.UpgradeNode
		if err := rows.Scan(&id, &n.NodeID, &n.Hostname, &n.FromVersion, &n.Phase, &n.Error, &n.StartedAt, &n.FinishedAt); err != nil {
			return err
		}
		us[at[id]].Nodes = append(us[at[id]].Nodes, n)
	}
	return rows.Err()
}

// ListUpgrades returns the rolling upgrades with their nodes, newest first.
func (s *Store) ListUpgrades(ctx context.Context) ([]quantix.Upgrade, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+upgradeColumns+` ORDER BY u.created_at DESC, u.id`)
	if err != nil {
		return nil, fmt.Errorf("list upgrades: %w", err)
	}
	us, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (quantix.Upgrade, error) { return scanUpgrade(r) })
	if err == nil {
		err = s.upgradeNodes(ctx, us)
	}
	if err != nil {
		return nil, fmt.Errorf("list upgrades: %w", err)
	}
	if us == nil {
		us = []quantix.Upgrade{}
	}
	return us, nil
}

// GetUpgrade returns one rolling upgrade, or ErrNotFound.
func (s *Store) GetUpgrade(ctx context.Context, id string) (quantix.Upgrade, error) {
	if !isUUIDText(id) {
		return quantix.Upgrade{}, fmt.Errorf("upgrade %q: %w", id, ErrNotFound)
	}
	u, err := scanUpgrade(s.pool.QueryRow(ctx, `SELECT `+upgradeColumns+` WHERE u.id = $1::uuid`, strings.ToLower(id)))
	if isNoRows(err) {
		return u, fmt.Errorf("upgrade %s: %w", id, ErrNotFound)
	}
	if err == nil {
		us := []quantix.Upgrade{u}
		err = s.upgradeNodes(ctx, us)
		u = us[0]
	}
	if err != nil {
		return u, fmt.Errorf("get upgrade %s: %w", id, err)
	}
	return u, nil
}

// CancelUpgrade stops a running upgrade: the node being upgraded loses its
// DesiredUpgrade (a node already rebooting into the release still boots it), the
// nodes after it are left alone. A finished upgrade is a *ConflictError.
func (s *Store) CancelUpgrade(ctx context.Context, id string) (quantix.Upgrade, error) {
	if !isUUIDText(id) {
		return quantix.Upgrade{}, fmt.Errorf("upgrade %q: %w", id, ErrNotFound)
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var state string
		err := tx.QueryRow(ctx, `SELECT state FROM upgrades WHERE id = $1 FOR UPDATE`, id).Scan(&state)
		if isNoRows(err) {
			return fmt.Errorf("upgrade %s: %w", id, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if state != quantix.UpgradeRunning {
			return conflict("upgrade %s is %s already", id, state)
		}
		return endUpgrade(ctx, tx, id, quantix.UpgradeCancelled, quantix.UpgradeNodeCancelled, "cancelled by an admin", "cancelled by an admin")
	})
	if err != nil {
		return quantix.Upgrade{}, vmErr("cancel upgrade", id, err)
	}
	return s.GetUpgrade(ctx, id)
}

// endUpgrade finishes a running upgrade as state with reason; its node in progress
// (if any) gets nodePhase and nodeErr, loses its DesiredUpgrade and has the end in
// its history.
func endUpgrade(ctx context.Context, tx pgx.Tx, id, state, nodePhase, nodeErr, reason string) error {
	var nodeID, hostname, version string
	err := tx.QueryRow(ctx, `UPDATE upgrade_nodes un SET phase = $2, error = $3, finished_at = now()
		FROM upgrades u WHERE u.id = un.upgrade_id AND un.upgrade_id = $1 AND un.phase IN ('staging', 'activating')
		RETURNING un.node_id::text, un.hostname, u.version`, id, nodePhase, nodeErr).Scan(&nodeID, &hostname, &version)
	switch {
	case err == nil:
		if _, err := bump(ctx, tx, nodeID); err != nil {
			return err
		}
		if err := addEvent(ctx, tx, nodeID, hostname, "upgrade", fmt.Sprintf("upgrade %s to %s %s: %s", id, version, state, nodeErr)); err != nil {
			return err
		}
	case !isNoRows(err):
		return err
	}
	_, err = tx.Exec(ctx, `UPDATE upgrades SET state = $2, reason = $3, current_node = NULL, finished_at = now(), updated_at = now()
		WHERE id = $1`, id, state, reason)
	return err
}

// StepUpgrade advances the running upgrade by one step, if there is one and no
// other vDC is stepping it (FOR UPDATE SKIP LOCKED): the whole decision is made
// on rows locked for it, so several vDCs on one database never take a step twice.
// It says whether anything changed (call it again then). nodeTimeout bounds each
// node from its start to its health gate.
func (s *Store) StepUpgrade(ctx context.Context, nodeTimeout time.Duration) (bool, error) {
	changed := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var id, version string
		var activate bool
		err := tx.QueryRow(ctx, `SELECT id::text, version, activate FROM upgrades WHERE state = 'running'
			FOR UPDATE SKIP LOCKED`).Scan(&id, &version, &activate)
		if isNoRows(err) {
			return nil
		}
		if err != nil {
			return err
		}
		var (
			idx                             int
			nodeID, hostname, phase, nphase string
			osVersion                       string
			slots                           *quantix.SlotsStatus
			progress                        *quantix.UpgradeProgress
			exists, late, slotsChanged      bool
		)
		err = tx.QueryRow(ctx, `SELECT un.idx, un.node_id::text, un.hostname, un.phase, n.id IS NOT NULL,
			    coalesce(n.phase, ''), coalesce(n.os_version, ''), n.os_slots, n.os_upgrade,
			    un.started_at IS NOT NULL AND now() > un.started_at + $2::interval,
			    n.os_slots IS DISTINCT FROM un.slots_before
			FROM upgrade_nodes un LEFT JOIN nodes n ON n.id = un.node_id
			WHERE un.upgrade_id = $1 AND un.phase IN ('pending', 'staging', 'activating')
			ORDER BY un.idx LIMIT 1`, id, nodeTimeout).
			Scan(&idx, &nodeID, &hostname, &phase, &exists, &nphase, &osVersion, &slots, &progress, &late, &slotsChanged)
		if isNoRows(err) {
			changed = true
			_, err := tx.Exec(ctx, `UPDATE upgrades SET state = 'succeeded', current_node = NULL, finished_at = now(), updated_at = now()
				WHERE id = $1`, id)
			return err
		}
		if err != nil {
			return err
		}
		fail := func(why string) error {
			changed = true
			if phase == quantix.UpgradeNodePending {
				// Not started: record why on its row, it has no order to take back.
				if _, err := tx.Exec(ctx, `UPDATE upgrade_nodes SET phase = 'failed', error = $3, finished_at = now()
					WHERE upgrade_id = $1 AND idx = $2`, id, idx, why); err != nil {
					return err
				}
				if exists {
					if err := addEvent(ctx, tx, nodeID, hostname, "upgrade", fmt.Sprintf("upgrade %s to %s failed before it started: %s", id, version, why)); err != nil {
						return err
					}
				}
			}
			return endUpgrade(ctx, tx, id, quantix.UpgradeFailed, quantix.UpgradeNodeFailed, why, "node "+hostname+": "+why)
		}
		// move sets the node's phase, takes its order to the node (a new generation
		// wakes its long-poll) and records the step in its history.
		move := func(to, msg string) error {
			changed = true
			if _, err := tx.Exec(ctx, `UPDATE upgrade_nodes un SET phase = $3,
				    started_at = CASE WHEN $3 = 'staging' THEN now() ELSE un.started_at END,
				    finished_at = CASE WHEN $3 IN ('done', 'skipped') THEN now() END,
				    slots_before = CASE WHEN $3 = 'activating' THEN n.os_slots ELSE un.slots_before END
				FROM nodes n WHERE n.id = un.node_id AND un.upgrade_id = $1 AND un.idx = $2`, id, idx, to); err != nil {
				return err
			}
			cur := any(nodeID)
			if to == quantix.UpgradeNodeDone || to == quantix.UpgradeNodeSkipped {
				cur = nil
			}
			if _, err := tx.Exec(ctx, `UPDATE upgrades SET current_node = $2, updated_at = now() WHERE id = $1`, id, cur); err != nil {
				return err
			}
			if to != quantix.UpgradeNodeSkipped {
				if _, err := bump(ctx, tx, nodeID); err != nil {
					return err
				}
			}
			return addEvent(ctx, tx, nodeID, hostname, "upgrade", fmt.Sprintf("upgrade %s to %s: %s", id, version, msg))
		}
		if !exists {
			return fail("deleted during the upgrade")
		}
		mine := progress != nil && progress.Upgrade == id
		switch phase {
		case quantix.UpgradeNodePending:
			switch {
			case nphase != quantix.PhaseReady:
				return fail(fmt.Sprintf("is %s, not ready", nphase))
			case osVersion == version:
				return move(quantix.UpgradeNodeSkipped, "skipped: runs it already")
			}
			return move(quantix.UpgradeNodeStaging, fmt.Sprintf("staging (from %s)", osVersion))
		case quantix.UpgradeNodeStaging:
			switch {
			case mine && progress.Phase == quantix.UpgradeFailed:
				return fail("staging failed: " + progress.Error)
			case mine && progress.Phase == quantix.UpgradeStaged && activate:
				return move(quantix.UpgradeNodeActivating, "staged; activating (reboot into the new slot)")
			case mine && progress.Phase == quantix.UpgradeStaged:
				return move(quantix.UpgradeNodeDone, "staged; not activated (it boots at the next reboot)")
			case late:
				return fail(fmt.Sprintf("not staged within %s", nodeTimeout))
			}
		case quantix.UpgradeNodeActivating:
			switch {
			case slots != nil && osVersion == version && slots.State == quantix.SlotGood:
				return move(quantix.UpgradeNodeDone, fmt.Sprintf("done: runs %s from slot %s, committed good", version, slots.Booted))
			case mine && progress.Phase == quantix.UpgradeFailed:
				return fail("activation failed: " + progress.Error)
			case slots != nil && slots.State == quantix.SlotRolledBack && osVersion != version && slotsChanged:
				return fail(fmt.Sprintf("rolled back to %s (slot %s): %s", osVersion, slots.Booted, cmp.Or(slots.Reason, "no reason given")))
			case late:
				return fail(fmt.Sprintf("not running %s with its slot good within %s (runs %s)", version, nodeTimeout, osVersion))
			}
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("step upgrade: %w", err)
	}
	return changed, nil
}

// desiredUpgrade is the order of a node in a running upgrade's staging or
// activating phase (NodeDesired.Upgrade), nil for none.
func desiredUpgrade(ctx context.Context, tx pgx.Tx, nodeID string) (*quantix.DesiredUpgrade, error) {
	var d quantix.DesiredUpgrade
	err := tx.QueryRow(ctx, `SELECT u.id::text, r.id::text, r.image, r.version, r.files, un.phase = 'activating'
		FROM upgrade_nodes un JOIN upgrades u ON u.id = un.upgrade_id JOIN releases r ON r.id = u.release_id
		WHERE un.node_id = $1 AND u.state = 'running' AND un.phase IN ('staging', 'activating')`, nodeID).
		Scan(&d.Upgrade, &d.Release, &d.Image, &d.Version, &d.Files, &d.Activate)
	if isNoRows(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("desired upgrade: %w", err)
	}
	return &d, nil
}
