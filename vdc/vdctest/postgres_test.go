package vdctest_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/quantix/quantix/vdc/vdctest"
)

func TestPostgresPasswordAuth(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	p := vdctest.Shared(t)
	ctx := context.Background()
	u := p.NewDatabase(t)
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatalf("connect with password: %v", err)
	}
	defer conn.Close(ctx)
	var method string
	if err := conn.QueryRow(ctx, "SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' LIMIT 1").Scan(&method); err != nil {
		// pg_hba_file_rules needs superuser; read it through the admin URL instead.
		admin, err := pgx.Connect(ctx, p.AdminURL())
		if err != nil {
			t.Fatal(err)
		}
		defer admin.Close(ctx)
		if err := admin.QueryRow(ctx, "SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' LIMIT 1").Scan(&method); err != nil {
			t.Fatal(err)
		}
	}
	if method != "scram-sha-256" {
		t.Errorf("pg_hba host auth = %q, want scram-sha-256", method)
	}
	bad := strings.Replace(u, p.Password, "wrong", 1)
	if c, err := pgx.Connect(ctx, bad); err == nil {
		c.Close(ctx)
		t.Errorf("connect with a wrong password succeeded")
	}
	// Two databases are distinct.
	u2 := p.NewDatabase(t)
	if u2 == u {
		t.Errorf("NewDatabase returned %q twice", u)
	}
}
