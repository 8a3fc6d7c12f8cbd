package vdc_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/tests/syncbuf"
	"github.com/quantix/quantix/vdc"
	"github.com/quantix/quantix/vdc/store"
	"github.com/quantix/quantix/vdc/vdctest"
)

// storedAdminHash reads the cluster's admin token digest straight from the database.
func storedAdminHash(t *testing.T, dbURL string) [32]byte {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var h []byte
	var rows int
	if err := conn.QueryRow(ctx, `SELECT hash, (SELECT count(*) FROM admin_token) FROM admin_token`).Scan(&h, &rows); err != nil || rows != 1 {
		t.Fatalf("admin_token: %d rows, %v; want one", rows, err)
	}
	return [32]byte(h)
}

// adminStatus is the status of an admin call to base with token.
func adminStatus(t *testing.T, base, token string) int {
	t.Helper()
	code, _ := call(t, http.MethodGet, base+quantix.PathAgentCA, token, nil)
	return code
}

// TestAdminTokenRotationAcrossVDCs: two vDCs on one database; a rotation through
// one is refused at once by it and, within the announced bound, by the other, which
// then takes only the new token. Prints how long the other vDC took.
func TestAdminTokenRotationAcrossVDCs(t *testing.T) {
	skipShort(t)
	logs := &syncbuf.Buffer{}
	a := vdctest.Start(t, vdctest.Options{Log: logs})
	b := vdctest.Start(t, vdctest.Options{DatabaseURL: a.DatabaseURL, JoinTokens: []string{a.JoinToken}, AdminToken: a.AdminToken, Log: logs})
	old := a.AdminToken
	for _, v := range []*vdctest.VDC{a, b} {
		if code := adminStatus(t, v.URL, old); code != http.StatusOK {
			t.Fatalf("%s before the rotation: %d, want 200", v.URL, code)
		}
	}
	req, _ := http.NewRequest(http.MethodPost, a.URL+quantix.PathAdminTokenRotate, strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+old)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	rotated := time.Now()
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var rot quantix.AdminTokenRotation
	decodeInto(t, body, &rot)
	if resp.StatusCode != http.StatusOK || len(rot.AdminToken) != 64 || rot.Generation != 2 || rot.PropagationSeconds < 1 ||
		resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("rotate: %d %+v (Cache-Control %q), want 200, a 64-hex token, generation 2, a bound, no-store",
			resp.StatusCode, rot, resp.Header.Get("Cache-Control"))
	}
	if code := adminStatus(t, a.URL, old); code != http.StatusUnauthorized {
		t.Errorf("the rotating vDC with the old token: %d, want 401", code)
	}
	if code := adminStatus(t, a.URL, rot.AdminToken); code != http.StatusOK {
		t.Errorf("the rotating vDC with the new token: %d, want 200", code)
	}
	bound := time.Duration(rot.PropagationSeconds) * time.Second
	var took time.Duration
	for {
		okOld := adminStatus(t, b.URL, old) == http.StatusOK
		okNew := adminStatus(t, b.URL, rot.AdminToken) == http.StatusOK
		took = time.Since(rotated)
		if !okOld && okNew {
			break
		}
		if took > bound+time.Second {
			t.Fatalf("the other vDC %s after the rotation: old token accepted %v, new %v; want only the new within %s", took, okOld, okNew, bound)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("the other vDC refused the old token and took the new one %s after the rotation (bound %s)", took.Round(time.Millisecond), bound)
	// From then on: only the new token, on both, also for another rotation.
	if code, b := call(t, http.MethodPost, b.URL+quantix.PathAdminTokenRotate, old, struct{}{}); code != http.StatusUnauthorized {
		t.Errorf("rotate with the old token: %d %s, want 401", code, b)
	}
	if got := storedAdminHash(t, a.DatabaseURL); got != store.HashSecret(rot.AdminToken) {
		t.Errorf("the database holds another digest than the new token's")
	}
	if strings.Contains(logs.String(), rot.AdminToken) || strings.Contains(logs.String(), old) {
		t.Errorf("the vDC log holds an admin token")
	}
}

// TestAdminTokenConfiguredDiffers: the first vDC's token is the cluster's. A vDC
// configured with another one (vdc.toml admin_token, or secrets.toml's
// admin_token_hash) starts, warns naming the key, refuses its own token and accepts
// the cluster's; the stored digest is untouched. On an empty database the
// secrets.toml digest (an installer's or an older vDC's) is what is stored.
func TestAdminTokenConfiguredDiffers(t *testing.T) {
	skipShort(t)
	a := vdctest.Start(t, vdctest.Options{})
	logs := &syncbuf.Buffer{}
	other := "other-admin-token-" + newSecret()
	b := vdctest.Start(t, vdctest.Options{DatabaseURL: a.DatabaseURL, JoinTokens: []string{a.JoinToken}, AdminToken: other, Log: logs})
	if !strings.Contains(logs.String(), "the configured admin token is not the cluster's") || !strings.Contains(logs.String(), "key=admin_token") {
		t.Errorf("no warning naming admin_token in the log of the vDC configured differently:\n%s", logs)
	}
	if code := adminStatus(t, b.URL, other); code != http.StatusUnauthorized {
		t.Errorf("its own configured token: %d, want 401", code)
	}
	if code := adminStatus(t, b.URL, a.AdminToken); code != http.StatusOK {
		t.Errorf("the cluster's token on it: %d, want 200", code)
	}
	if got := storedAdminHash(t, a.DatabaseURL); got != store.HashSecret(a.AdminToken) {
		t.Errorf("the second vDC overwrote the stored digest")
	}

	// secrets.toml's admin_token_hash: a seed on an empty database, else warned about.
	pg := vdctest.Shared(t)
	seeded := "seeded-admin-token-" + newSecret()
	for _, tc := range []struct {
		name, dbURL string
		accepted    string // the token that works
		warned      bool
	}{
		{"empty database", pg.NewDatabase(t), seeded, false},
		{"database of another vDC", a.DatabaseURL, a.AdminToken, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			secrets := filepath.Join(t.TempDir(), "secrets.toml")
			sum := sha256.Sum256([]byte(seeded))
			if err := quantix.SaveVDCSecrets(secrets, quantix.VDCSecretsFile{AdminTokenHash: "sha256:" + hex.EncodeToString(sum[:])}); err != nil {
				t.Fatal(err)
			}
			out, log := &syncbuf.Buffer{}, &syncbuf.Buffer{}
			cfg := vdc.DefaultConfig()
			cfg.Listen, cfg.UIListen, cfg.DatabaseURL, cfg.SecretsFile, cfg.DataDir, cfg.Stdout = "127.0.0.1:0", "127.0.0.1:0", tc.dbURL, secrets, t.TempDir(), out
			base, stop, err := startServiceLog(cfg, slog.New(slog.NewTextHandler(log, nil)))
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
			warned := strings.Contains(log.String(), "the configured admin token is not the cluster's") &&
				strings.Contains(log.String(), "admin_token_hash")
			if warned != tc.warned || strings.Contains(out.String(), quantix.MarkerAdminToken) {
				t.Errorf("warned %v, want %v; stdout:\n%s\nlog:\n%s", warned, tc.warned, out, log)
			}
			if code := adminStatus(t, base, tc.accepted); code != http.StatusOK {
				t.Errorf("the cluster's token: %d, want 200", code)
			}
			if tc.accepted != seeded {
				if code := adminStatus(t, base, seeded); code != http.StatusUnauthorized {
					t.Errorf("the secrets.toml token on a database with another: %d, want 401", code)
				}
			}
		})
	}
}

// TestAdminTokenGeneratedOnce: six vDCs without an admin token start at once on an
// empty database: one generates the cluster's token and prints it, the others
// print nothing, and every one of them takes the printed token.
func TestAdminTokenGeneratedOnce(t *testing.T) {
	skipShort(t)
	dbURL := vdctest.Shared(t).NewDatabase(t)
	const n = 6
	outs := make([]*syncbuf.Buffer, n)
	bases := make([]string, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		outs[i] = &syncbuf.Buffer{}
		cfg := vdc.DefaultConfig()
		cfg.Listen, cfg.UIListen, cfg.DatabaseURL, cfg.Stdout = "127.0.0.1:0", "127.0.0.1:0", dbURL, outs[i]
		cfg.SecretsFile, cfg.DataDir = filepath.Join(t.TempDir(), "secrets.toml"), t.TempDir()
		wg.Go(func() {
			<-start
			var stop func() error
			bases[i], stop, errs[i] = startService(cfg)
			if errs[i] == nil {
				t.Cleanup(func() { stop() })
			}
		})
	}
	close(start)
	wg.Wait()
	var tokens []string
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("vDC %d: %v", i, errs[i])
		}
		for _, line := range strings.Split(outs[i].String(), "\n") {
			if m, ok := quantix.ParseMarker(line); ok && m.Kind == quantix.MarkerAdminToken {
				tokens = append(tokens, m.Get("token"))
			}
		}
	}
	if len(tokens) != 1 || len(tokens[0]) != 64 {
		t.Fatalf("%d vDCs starting at once printed %d admin tokens, want 1", n, len(tokens))
	}
	for i, base := range bases {
		if code := adminStatus(t, base, tokens[0]); code != http.StatusOK {
			t.Errorf("vDC %d with the printed token: %d, want 200", i, code)
		}
	}
	if got := storedAdminHash(t, dbURL); got != store.HashSecret(tokens[0]) {
		t.Errorf("the stored digest is not the printed token's")
	}
}
