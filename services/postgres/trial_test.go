package postgres

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix/quantix"
)

// exec runs one statement against the vDC's database of a running service.
func execSQL(t *testing.T, cfg Config, sql string) {
	t.Helper()
	ctx := context.Background()
	conn, err := connect(ctx, DatabaseURL(cfg.SocketDir, cfg.Port, secretsOf(t, cfg).DatabasePassword))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func rows(t *testing.T, cfg Config) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := connect(ctx, DatabaseURL(cfg.SocketDir, cfg.Port, secretsOf(t, cfg).DatabasePassword))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rs, err := conn.Query(ctx, `SELECT v FROM registry ORDER BY v`)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var out []string
	for rs.Next() {
		var v string
		if err := rs.Scan(&v); err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

func hasTable(t *testing.T, cfg Config, name string) bool {
	t.Helper()
	ctx := context.Background()
	conn, err := connect(ctx, DatabaseURL(cfg.SocketDir, cfg.Port, secretsOf(t, cfg).DatabasePassword))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, name).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

// A QvDC upgrade whose trial migrates and then fails: the old release finds
// its database as it was before the trial (not the new schema it would refuse),
// the trial's writes set aside; a retry of the trial keeps the first copy; a
// committed trial's copy is removed. Real PostgreSQL throughout.
func TestTrialDatabase(t *testing.T) {
	requirePostgres(t)
	cfg := testConfig(t)
	cfg.Trial = Trial{Version: "0.1.0"}
	r, err := start(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	execSQL(t, cfg, `CREATE TABLE registry (v text)`)
	execSQL(t, cfg, `INSERT INTO registry VALUES ('node-before')`)
	r.stop(t)

	// The trial of 0.2.0 migrates and writes; its first try is cut off (stopped).
	cfg.Trial = Trial{On: true, Version: "0.2.0"}
	r, err = start(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	svc := r.svc
	if _, err := os.Stat(filepath.Join(svc.TrialSnapshotDir(), "data", "PG_VERSION")); err != nil {
		t.Fatalf("no copy of the cluster before the trial: %v", err)
	}
	execSQL(t, cfg, `CREATE TABLE schema_0_2 (x int)`)
	execSQL(t, cfg, `INSERT INTO registry VALUES ('node-during')`)
	r.stop(t)
	info, _ := os.ReadFile(filepath.Join(svc.TrialSnapshotDir(), snapshotInfo))

	// Its second try keeps the copy from before the first (which had migrated).
	r, err = start(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(filepath.Join(svc.TrialSnapshotDir(), snapshotInfo)); string(again) != string(info) {
		t.Errorf("a retry of the trial replaced the copy: %q -> %q", info, again)
	}
	if got := rows(t, cfg); strings.Join(got, ",") != "node-before,node-during" {
		t.Errorf("during the trial: %v", got)
	}
	r.stop(t)

	// The trial failed; 0.1.0 boots again and gets its database back.
	cfg.Trial = Trial{Version: "0.1.0"}
	r, err = start(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := rows(t, cfg); strings.Join(got, ",") != "node-before" {
		t.Errorf("after the rollback: %v, want only node-before", got)
	}
	if hasTable(t, cfg, "schema_0_2") {
		t.Errorf("after the rollback the trial's migration is still there")
	}
	if _, err := os.Stat(svc.TrialSnapshotDir()); !os.IsNotExist(err) {
		t.Errorf("the copy is still there after it was put back: %v", err)
	}
	if _, err := os.Stat(filepath.Join(svc.TrialDiscardedDir(), "PG_VERSION")); err != nil {
		t.Errorf("the failed trial's cluster was not kept aside: %v", err)
	}
	if out := r.stdout.String(); !strings.Contains(out, quantix.MarkerPrefix+quantix.MarkerWarning) || !strings.Contains(out, "the trial of 0.2.0 failed") {
		t.Errorf("no warning on the console about the discarded trial data:\n%s", out)
	}
	execSQL(t, cfg, `INSERT INTO registry VALUES ('node-after')`)
	r.stop(t)

	// A trial that is committed: the next ordinary boot of that release drops
	// the copy and keeps what the trial wrote.
	cfg.Trial = Trial{On: true, Version: "0.2.1"}
	if r, err = start(t, cfg); err != nil {
		t.Fatal(err)
	}
	execSQL(t, cfg, `INSERT INTO registry VALUES ('node-trial-kept')`)
	r.stop(t)
	cfg.Trial = Trial{Version: "0.2.1"}
	if r, err = start(t, cfg); err != nil {
		t.Fatal(err)
	}
	if got := rows(t, cfg); strings.Join(got, ",") != "node-after,node-before,node-trial-kept" {
		t.Errorf("after a committed trial: %v", got)
	}
	if _, err := os.Stat(svc.TrialSnapshotDir()); !os.IsNotExist(err) {
		t.Errorf("a committed trial's copy is still there: %v", err)
	}
	r.stop(t)
}
