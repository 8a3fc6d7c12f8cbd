// Package migrations holds the vDC's PostgreSQL schema as embedded, numbered SQL files
// (001_registry.sql, 002_inventory.sql, ...) and applies them with jackc/tern.
//
// tern gives the guarantees the vDC relies on: every migration runs in one
// transaction together with its version bump, all of it under a PostgreSQL advisory
// lock, so two qx-vdc processes starting together apply each migration exactly once,
// and a failing migration leaves nothing half-applied. On top of that this package
// refuses a database whose schema is newer than the binary, with a message that says
// what to do.
package migrations

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/tern/v2/migrate"
)

//go:embed *.sql
var files embed.FS

// VersionTable is tern's one-row table holding the applied schema version.
const VersionTable = "public.schema_version"

// ErrSchemaNewer is wrapped when the database holds migrations this binary lacks.
var ErrSchemaNewer = errors.New("database schema is newer than this qx-vdc")

// Status is where a database stands.
type Status struct {
	Current int // applied migrations
	Latest  int // migrations this binary holds
}

// Pending is the number of migrations Up would apply.
func (s Status) Pending() int { return s.Latest - s.Current }

// Load returns a migrator holding the embedded migrations, creating the version
// table if needed. Tests append more migrations to it before calling Apply.
func Load(ctx context.Context, conn *pgx.Conn) (*migrate.Migrator, error) {
	m, err := migrate.NewMigrator(ctx, conn, VersionTable)
	if err != nil {
		return nil, fmt.Errorf("migrations: prepare %s: %w", VersionTable, err)
	}
	if err := m.LoadMigrations(files); err != nil {
		return nil, fmt.Errorf("migrations: load embedded files: %w", err)
	}
	return m, nil
}

// Latest is the number of embedded migrations.
func Latest() int {
	paths, err := migrate.FindMigrations(files)
	if err != nil {
		panic(fmt.Sprintf("migrations: embedded files are broken: %v", err)) // caught by the tests
	}
	return len(paths)
}

// Up applies every pending embedded migration and returns how many it applied.
func Up(ctx context.Context, conn *pgx.Conn, log *slog.Logger) (int, error) {
	m, err := Load(ctx, conn)
	if err != nil {
		return 0, err
	}
	return Apply(ctx, m, log)
}

// Apply runs m's pending migrations. It checks the version again under tern's
// advisory lock, so concurrent callers apply each migration once.
func Apply(ctx context.Context, m *migrate.Migrator, log *slog.Logger) (int, error) {
	before, err := m.GetCurrentVersion(ctx)
	if err != nil {
		return 0, fmt.Errorf("migrations: read schema version: %w", err)
	}
	latest := int32(len(m.Migrations))
	if before > latest {
		return 0, newerError(int(before), int(latest))
	}
	var applied int
	m.OnStart = func(seq int32, name, direction, _ string) {
		applied++
		log.Info("applying migration", "version", seq, "name", name, "direction", direction)
	}
	if err := m.MigrateTo(ctx, latest); err != nil {
		var bad migrate.BadVersionError
		if errors.As(err, &bad) {
			// Another process moved the schema past us between the check and the lock.
			now, verr := m.GetCurrentVersion(ctx)
			if verr == nil && now > latest {
				return 0, newerError(int(now), int(latest))
			}
		}
		// tern already rolled the failing migration back; earlier ones stay applied.
		return applied - 1, fmt.Errorf("migrations: %w", err)
	}
	return applied, nil
}

// Querier is what ReadStatus needs: a *pgx.Conn, a pgx.Tx or a *pgxpool.Pool.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ReadStatus reports the applied and the embedded schema versions without changing
// anything. A database never migrated reports Current 0.
func ReadStatus(ctx context.Context, conn Querier) (Status, error) {
	st := Status{Latest: Latest()}
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", VersionTable).Scan(&exists); err != nil {
		return st, fmt.Errorf("migrations: look for %s: %w", VersionTable, err)
	}
	if !exists {
		return st, nil
	}
	var v int32
	if err := conn.QueryRow(ctx, "SELECT version FROM "+VersionTable).Scan(&v); err != nil {
		return st, fmt.Errorf("migrations: read %s: %w", VersionTable, err)
	}
	st.Current = int(v)
	if st.Current > st.Latest {
		return st, newerError(st.Current, st.Latest)
	}
	return st, nil
}

func newerError(db, binary int) error {
	return fmt.Errorf("%w: the database is at schema version %d, this binary knows versions up to %d; "+
		"run the qx-vdc release that migrated it (or newer), never an older one", ErrSchemaNewer, db, binary)
}
