package postgres

import "testing"

// BenchmarkFirstBoot measures an appliance's first boot: initdb, configuration,
// server start, role and database creation, up to ready.
//
//	go test -run '^$' -bench Boot -benchtime 5x ./services/postgres/
func BenchmarkFirstBoot(b *testing.B) {
	requirePostgres(b)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		cfg := testConfig(b)
		b.StartTimer()
		r, err := start(b, cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		r.cancel()
		if err := <-r.done; err != nil {
			b.Fatalf("stop: %v", err)
		}
		r.done <- nil
		b.StartTimer()
	}
}

// BenchmarkLaterBoot measures a later boot: an existing cluster, cleanly shut down,
// started up to ready (role, database and the vDC's login checked).
func BenchmarkLaterBoot(b *testing.B) {
	requirePostgres(b)
	cfg := testConfig(b)
	boot := func() {
		r, err := start(b, cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		r.cancel()
		if err := <-r.done; err != nil {
			b.Fatalf("stop: %v", err)
		}
		r.done <- nil
		b.StartTimer()
	}
	boot()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		boot()
	}
}
