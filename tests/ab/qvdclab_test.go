package ab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/google/uuid"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/tests/vm"
	"github.com/quantix/quantix/vdc/client"
)

// qvdcLab is one installed QvDC disk, on a hub with a workstation that reaches
// its API.
type qvdcLab struct {
	*lab
	ws  *vm.Workstation
	vdc *client.Client
	m   *vm.Machine
	pin string // the vDC's agent CA pin, from its ready marker
}

func newQvDCLab(t *testing.T) *qvdcLab {
	l := openLab(t, quantix.ImageQvDC, "ab-qvdc")
	q := &qvdcLab{lab: l}
	q.ws = vm.NewWorkstation(t, l.hub, vm.WorkstationMAC, vm.WorkstationAddr)
	var err error
	q.vdc, err = client.New(client.Config{URL: fmt.Sprintf("http://%s:%d", qvdcAddr.Addr(), labVDCPort), Token: qvdcAdminToken,
		HTTPClient: q.ws.HTTPClient(0)}) // deadlines come from each call's context
	must(t, err)
	l.disk = q.install(t)
	return q
}

// install runs the QvDC's installer on the host onto a new, empty disk image,
// with a static address on the hub, the lab's admin and join tokens and its
// release key trusted.
func (q *qvdcLab) install(t *testing.T) string {
	pub, err := os.ReadFile(q.key.Pub)
	must(t, err)
	answer := fmt.Sprintf("hostname = %q\nafter = \"poweroff\"\ntrusted_keys = [%q]\n[target]\nonly_empty = true\n"+
		"[network]\nmode = \"static\"\n[network.static]\naddress = %q\ngateway = %q\n"+
		"[vdc]\nadmin_token = %q\njoin_tokens = [%q]\n",
		qvdcHostname, strings.TrimSpace(string(pub)), qvdcAddr, vm.LabGateway, qvdcAdminToken, labJoinToken)
	return installImage(t, q.iso, quantix.ImageQvDC, q.version, "QVDC", qvdcHostname, answer)
}

// vdcReady is the vDC's ready marker; each boot prints one.
var vdcReady = vm.MatchMarker(quantix.MarkerReady, "service", "vdc")

// waitVDC takes the vDC's ready marker line of this boot and waits for its
// API's /readyz. The agent CA (its pin) lives in the database: it must not
// change across upgrades and rollbacks.
func (q *qvdcLab) waitVDC(t *testing.T, ready string) {
	t.Helper()
	mk, _ := quantix.ParseMarker(ready) // the line matched MatchMarker
	if pin := mk.Get("agent_ca_pin"); q.pin != "" && pin != q.pin {
		t.Errorf("the vDC's agent CA pin changed: %s, then %s", q.pin, pin)
	} else {
		q.pin = pin
	}
	deadline := time.Now().Add(vm.ScaleTimeout(time.Minute))
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := q.vdc.Readyz(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("vDC /readyz through the workstation: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (q *qvdcLab) expectController(t *testing.T, version, slot, state string) quantix.ControllerOS {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := q.vdc.Controller(ctx)
	must(t, err)
	s := c.Slots
	if c.Image != quantix.ImageQvDC || c.Version != version || s == nil || s.Booted != slot || s.State != state || slotInfo(s, slot).Version != version {
		t.Fatalf("GET %s = %+v (slots %+v), want %s %s booted from slot %s, %s", quantix.PathController, c, s, quantix.ImageQvDC, version, slot, state)
	}
	return c
}

func slotInfo(s *quantix.SlotsStatus, slot string) quantix.SlotInfo {
	for _, i := range s.Slots {
		if i.Slot == slot {
			return i
		}
	}
	return quantix.SlotInfo{}
}

func hasEvent(evs []quantix.ControllerEvent, kind, text string) bool {
	return slices.ContainsFunc(evs, func(e quantix.ControllerEvent) bool { return e.Kind == kind && strings.Contains(e.Message, text) })
}

// register registers a node as its agent does: over TLS pinned to the vDC's
// agent CA, with the lab's join token.
func (q *qvdcLab) register(t *testing.T, hostname string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: q.ws.DialContext, DisableKeepAlives: true,
		TLSClientConfig: quantix.PinnedTLS([]string{q.pin}, nil)}}
	c, err := client.New(client.Config{URL: fmt.Sprintf("https://%s:%d", qvdcAddr.Addr(), labVDCPort), HTTPClient: hc})
	must(t, err)
	secret := make([]byte, 32)
	_, err = rand.Read(secret)
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := c.Register(ctx, quantix.FormatJoinToken(q.pin, labJoinToken), quantix.RegisterRequest{Hostname: hostname,
		MachineID: uuid.NewString(), NodeSecret: hex.EncodeToString(secret), ManagementIP: "10.77.0.50", AgentVersion: "ab-test"})
	if err != nil || r.Registration != quantix.RegistrationRegistered {
		t.Fatalf("register %s: %+v, %v", hostname, r, err)
	}
}

func (q *qvdcLab) uploadImage(t *testing.T, name string) quantix.Image {
	t.Helper()
	data := make([]byte, 1<<20)
	_, err := rand.Read(data)
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	img, err := q.vdc.UploadImage(ctx, name, quantix.ImageRaw, sha(data), int64(len(data)), bytes.NewReader(data))
	if err != nil {
		t.Fatalf("upload image %s: %v", name, err)
	}
	return img
}

// registry is what must survive the upgrades as it is.
type registry struct {
	Nodes  []quantix.Node
	Images []quantix.Image
}

func (q *qvdcLab) registry(t *testing.T) registry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var r registry
	var err error
	if r.Nodes, err = q.vdc.Nodes(ctx); err != nil {
		t.Fatal(err)
	}
	if r.Images, err = q.vdc.Images(ctx); err != nil {
		t.Fatal(err)
	}
	return r
}

// expectRegistry: the same nodes (identity and registration) and images as
// before. A node's phase and timestamps move with time (it never heartbeats).
func (q *qvdcLab) expectRegistry(t *testing.T, when string, want registry) {
	t.Helper()
	got := q.registry(t)
	key := func(r registry) string {
		var b strings.Builder
		for _, n := range r.Nodes {
			fmt.Fprintf(&b, "node %s %s %s %s %s\n", n.ID, n.Hostname, n.MachineID, n.ManagementIP, n.RegisteredAt.UTC().Format(time.RFC3339Nano))
		}
		for _, i := range r.Images {
			fmt.Fprintf(&b, "image %s %s %s %d %s\n", i.ID, i.Name, i.Format, i.SizeBytes, i.SHA256)
		}
		return b.String()
	}
	if key(got) != key(want) {
		t.Errorf("registry %s:\n%s\nwant:\n%s", when, key(got), key(want))
	}
}

// release is the QvDC's release under version: its image configuration (cfg,
// or the ISO's with the version changed) and its qx-vdc built for version, as a
// release build stamps it, with migration (if any) as one more schema
// migration.
func (q *qvdcLab) release(t *testing.T, version string, cfg, migration []byte) release {
	if cfg == nil {
		cfg = q.brokenConfig(t, func(c *quantix.ImageConfig) { c.Version = version })
	}
	bin := filepath.Join(t.TempDir(), "qx-vdc")
	args := []string{"build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid= -X github.com/quantix/quantix.Version=" + version, "-o", bin}
	if migration != nil {
		dir := t.TempDir()
		name := fmt.Sprintf("%03d_ab_trial_schema.sql", migrationNumber(t))
		src, err := filepath.Abs(filepath.Join(migrationsDir, name))
		must(t, err)
		must(t, os.WriteFile(filepath.Join(dir, name), migration, 0o644))
		ov, err := json.Marshal(map[string]map[string]string{"Replace": {src: filepath.Join(dir, name)}})
		must(t, err)
		must(t, os.WriteFile(filepath.Join(dir, "overlay.json"), ov, 0o644))
		args = append(args, "-overlay", filepath.Join(dir, "overlay.json"))
	}
	build := exec.Command("go", append(args, "github.com/quantix/quantix/vdc/cmd/qx-vdc")...)
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build qx-vdc %s: %v: %s", version, err, out)
	}
	vdcBin, err := os.ReadFile(bin)
	must(t, err)
	return q.broken(t, version,
		map[string][]byte{strings.TrimPrefix(quantix.ImageConfigPath, "/"): cfg, "bbin/qx-vdc": vdcBin},
		map[string]uint64{"bbin/qx-vdc": 0o755})
}

// migrationsDir holds the vDC's embedded schema migrations.
var migrationsDir = filepath.Join("..", "..", "vdc", "migrations")

// migrationNumber is the number of the migration a newer schema adds: tern
// wants them numbered without gaps.
func migrationNumber(t *testing.T) int {
	sql, err := filepath.Glob(filepath.Join(migrationsDir, "*.sql"))
	if err != nil || len(sql) == 0 {
		t.Fatalf("no migrations in %s: %v", migrationsDir, err)
	}
	return len(sql) + 1
}

// upgrade asks the QvDC to stage rel and reboot into it; it returns the answer
// and when the call was made.
func (q *qvdcLab) upgrade(t *testing.T, rel quantix.Release) (quantix.ControllerUpgrade, time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), vm.ScaleTimeout(5*time.Minute))
	defer cancel()
	t0 := time.Now()
	u, err := q.vdc.UpgradeController(ctx, quantix.ControllerUpgradeRequest{Release: rel.ID, Activate: true})
	if err != nil {
		t.Fatalf("upgrade the QvDC to %s: %v", rel.ID, err)
	}
	t.Logf("staged %s into slot %s in %.1f s (API call)", u.Staged.Version, u.Staged.Slot, time.Since(t0).Seconds())
	if !u.Rebooting {
		t.Fatalf("upgrade answer %+v: want rebooting", u)
	}
	return u, t0
}

// dataFS is QUANTIX-DATA of the (powered-off) disk as debugfs opens it.
func (q *qvdcLab) dataFS(t *testing.T) string {
	d, err := diskfs.Open(q.disk, diskfs.WithOpenMode(diskfs.ReadOnly))
	must(t, err)
	defer d.Close()
	tab, err := d.GetPartitionTable()
	must(t, err)
	for _, p := range tab.(*gpt.Table).Partitions {
		if p.Name == quantix.LabelData {
			return fmt.Sprintf("%s?offset=%d", q.disk, p.Start*uint64(d.LogicalBlocksize))
		}
	}
	t.Fatalf("%s: no %s partition", q.disk, quantix.LabelData)
	return ""
}

func debugfsExists(t *testing.T, fs, path string) bool {
	out, err := exec.Command("debugfs", "-R", "stat "+path, fs).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs stat %s: %v: %s (Debian package e2fsprogs: make deps)", path, err, out)
	}
	return !strings.Contains(string(out), "File not found")
}
