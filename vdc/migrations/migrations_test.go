package migrations_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/quantix/quantix/vdc/migrations"
	"github.com/quantix/quantix/vdc/vdctest"
)

func TestMain(m *testing.M) { vdctest.Main(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func tables(t *testing.T, conn *pgx.Conn) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func TestLatestMatchesFiles(t *testing.T) {
	if migrations.Latest() < 2 {
		t.Errorf("Latest() = %d, want the embedded files (at least 2)", migrations.Latest())
	}
}

func TestFreshThenRerun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	ctx := context.Background()
	conn := connect(t, vdctest.Shared(t).NewDatabase(t))
	st, err := migrations.ReadStatus(ctx, conn)
	if err != nil || st.Current != 0 || st.Pending() != migrations.Latest() {
		t.Fatalf("status of an empty database = %+v, %v", st, err)
	}
	n, err := migrations.Up(ctx, conn, quiet)
	if err != nil || n != migrations.Latest() {
		t.Fatalf("Up on a fresh database = %d, %v; want %d", n, err, migrations.Latest())
	}
	want := "admin_token agent_ca cluster_state controller_events images join_tokens managed_vms node_events nodes releases schema_version storage_pools ui_login_attempts ui_sessions upgrade_nodes upgrades " +
		"virtual_machines vm_consoles vm_disks vm_events vm_nics vm_tombstones"
	if got := strings.Join(tables(t, conn), " "); got != want {
		t.Errorf("tables = %s, want %s", got, want)
	}
	n, err = migrations.Up(ctx, conn, quiet)
	if err != nil || n != 0 {
		t.Errorf("second Up = %d, %v; want 0 (no-op)", n, err)
	}
	st, err = migrations.ReadStatus(ctx, conn)
	if err != nil || st.Current != st.Latest || st.Pending() != 0 {
		t.Errorf("status after Up = %+v, %v", st, err)
	}
}

func TestConcurrentUp(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	ctx := context.Background()
	url := vdctest.Shared(t).NewDatabase(t)
	const procs = 8
	conns := make([]*pgx.Conn, procs)
	for i := range conns {
		conns[i] = connect(t, url)
	}
	var wg sync.WaitGroup
	applied := make([]int, procs)
	errs := make([]error, procs)
	for i := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			applied[i], errs[i] = migrations.Up(ctx, conns[i], quiet)
		}()
	}
	wg.Wait()
	total := 0
	for i := range procs {
		if errs[i] != nil {
			t.Errorf("concurrent Up %d: %v", i, errs[i])
		}
		total += applied[i]
	}
	if total != migrations.Latest() {
		t.Errorf("%d concurrent Up calls applied %d migrations in all (%v), want each of %d exactly once", procs, total, applied, migrations.Latest())
	}
	st, err := migrations.ReadStatus(ctx, conns[0])
	if err != nil || st.Pending() != 0 {
		t.Errorf("status = %+v, %v", st, err)
	}
}

func TestFailingMigrationRollsBack(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	ctx := context.Background()
	conn := connect(t, vdctest.Shared(t).NewDatabase(t))
	if _, err := migrations.Up(ctx, conn, quiet); err != nil {
		t.Fatal(err)
	}
	m, err := migrations.Load(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	// The first statements succeed, the last fails: nothing of it may remain.
	m.AppendMigration("099_broken.sql", `
		CREATE TABLE half_done (x int);
		ALTER TABLE nodes ADD COLUMN half_done_col int;
		INSERT INTO half_done VALUES (1);
		SELECT 1 / 0;`, "")
	n, err := migrations.Apply(ctx, m, quiet)
	if err == nil || !strings.Contains(err.Error(), "division by zero") {
		t.Fatalf("Apply of a failing migration = %d, %v; want the division by zero error", n, err)
	}
	if n != 0 {
		t.Errorf("Apply reported %d applied, want 0", n)
	}
	for _, tb := range tables(t, conn) {
		if tb == "half_done" {
			t.Errorf("table half_done exists: the failed migration was half-applied")
		}
	}
	var cols int
	conn.QueryRow(ctx, `SELECT count(*) FROM information_schema.columns WHERE table_name = 'nodes' AND column_name = 'half_done_col'`).Scan(&cols)
	if cols != 0 {
		t.Errorf("nodes.half_done_col exists: the failed migration was half-applied")
	}
	st, err := migrations.ReadStatus(ctx, conn)
	if err != nil || st.Current != migrations.Latest() {
		t.Errorf("version after the failure = %+v, %v; want %d", st, err, migrations.Latest())
	}
	// The advisory lock was released: another Up works.
	if _, err := migrations.Up(ctx, conn, quiet); err != nil {
		t.Errorf("Up after a failed migration: %v", err)
	}
}

func TestNewerDatabaseRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	ctx := context.Background()
	conn := connect(t, vdctest.Shared(t).NewDatabase(t))
	if _, err := migrations.Up(ctx, conn, quiet); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `UPDATE `+migrations.VersionTable+` SET version = version + 1`); err != nil {
		t.Fatal(err)
	}
	_, err := migrations.Up(ctx, conn, quiet)
	if !errors.Is(err, migrations.ErrSchemaNewer) || !strings.Contains(err.Error(), "never an older one") {
		t.Errorf("Up on a newer database = %v, want ErrSchemaNewer with advice", err)
	}
	if _, err := migrations.ReadStatus(ctx, conn); !errors.Is(err, migrations.ErrSchemaNewer) {
		t.Errorf("ReadStatus on a newer database = %v, want ErrSchemaNewer", err)
	}
}
