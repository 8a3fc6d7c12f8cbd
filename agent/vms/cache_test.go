package vms_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent/vms"
)

// TestCache downloads images through the agent channel: verified copies are kept
// and reused, and bytes that do not match the size or sha256 the desired state
// names are refused without leaving a file behind.
func TestCache(t *testing.T) {
	srv, h := newDesiredServer(t)
	ch := vms.NewChannel(func() string { return h.URL }, &http.Client{}, 5*time.Second)
	dir := filepath.Join(t.TempDir(), "images")
	c := vms.NewCache(dir, ch)
	ctx := context.Background()
	good := []byte("an image of some bytes")
	sum := sha256.Sum256(good)
	img := quantix.DesiredImage{ID: "img-1", Format: quantix.ImageRaw, SizeBytes: int64(len(good)), SHA256: hex.EncodeToString(sum[:])}
	srv.images["img-1"] = good

	if _, err := c.Ensure(ctx, img); err == nil || !strings.Contains(err.Error(), vms.ErrNotRegistered.Error()) {
		t.Fatalf("Ensure before registration = %v, want %v", err, vms.ErrNotRegistered)
	}
	ch.SetNode(testNode, testSecret)
	p, err := c.Ensure(ctx, img)
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != string(good) || p != c.Path("img-1") {
		t.Fatalf("cached %s holds %q", p, b)
	}
	// Reused: the vDC may be gone.
	delete(srv.images, "img-1")
	if _, err := c.Ensure(ctx, img); err != nil {
		t.Errorf("Ensure of a cached image = %v, want it reused", err)
	}
	// A cache file damaged behind the agent's back is fetched again by a new
	// process (a fresh Cache) and refused while the vDC cannot send it.
	os.WriteFile(p, []byte("an image of SOME bytes"), 0o644)
	if _, err := vms.NewCache(dir, ch).Ensure(ctx, img); err == nil {
		t.Errorf("a damaged cache file was accepted")
	}
	if _, err := os.Stat(p); err == nil {
		t.Errorf("the damaged cache file is still there")
	}

	for _, tc := range []struct {
		name  string
		bytes []byte
		img   quantix.DesiredImage
		want  string
	}{
		{"sha mismatch", []byte("other bytes of the same len"), quantix.DesiredImage{ID: "img-2", SizeBytes: 27, SHA256: strings.Repeat("1", 64)}, "image img-2: sha256 mismatch"},
		{"short", []byte("short"), quantix.DesiredImage{ID: "img-3", SizeBytes: 10, SHA256: strings.Repeat("1", 64)}, "image img-3: size mismatch"},
		{"bad id", nil, quantix.DesiredImage{ID: "../etc", SizeBytes: 1, SHA256: strings.Repeat("1", 64)}, "not a valid image id"},
		{"no sha", nil, quantix.DesiredImage{ID: "img-4", SizeBytes: 1}, "no valid sha256"},
		{"missing at the vDC", nil, quantix.DesiredImage{ID: "img-5", SizeBytes: 1, SHA256: strings.Repeat("1", 64)}, "404"},
	} {
		if tc.bytes != nil {
			srv.images[tc.img.ID] = tc.bytes
		}
		_, err := c.Ensure(ctx, tc.img)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Ensure = %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*"))
	hidden, _ := filepath.Glob(filepath.Join(dir, ".*"))
	if len(left)+len(hidden) != 0 {
		t.Errorf("refused downloads left files: %v %v", left, hidden)
	}
}

// TestDomainXML checks what the definition of a desired VM says, and that the
// metadata reads back.
func TestDomainXML(t *testing.T) {
	vm := quantix.DesiredVM{UUID: "0b7e0f3c-2a47-4b8e-9d0c-31e3b2a1c001", Power: quantix.WantedRunning, Generation: 3,
		Spec: quantix.VMSpec{Name: "web", VCPUs: 2, MemoryBytes: 64 << 20, CDROM: "iso-1", Firmware: quantix.FirmwareUEFI,
			BootOrder: []string{quantix.BootCDROM, quantix.BootDisk},
			NICs:      []quantix.NICSpec{{Network: quantix.NetworkManagement, MAC: "52:54:00:aa:bb:cc"}}}}
	l := vms.Layout{Pool: "default", ImagesDir: "/img", ConsoleDir: "/log", Bridge: "br0", DomainType: "qemu"}
	x, err := vms.DomainXML(vm, "web", []vms.Disk{}, vms.Metadata{Node: "n1", Generation: 3, RebootCount: 2}, l)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`<domain type="qemu">`, `<os firmware="efi">`, `machine="q35"`, `<boot dev="cdrom"></boot>`,
		`<source file="/img/iso-1"></source>`, `<mac address="52:54:00:aa:bb:cc"></mac>`, `<source bridge="br0"></source>`,
		`<model type="virtio"></model>`, `<source path="/log/0b7e0f3c-2a47-4b8e-9d0c-31e3b2a1c001.log"></source>`, `<memory unit="KiB">65536</memory>`} {
		if !strings.Contains(x, want) {
			t.Errorf("DomainXML lacks %s:\n%s", want, x)
		}
	}
	if i, j := strings.Index(x, `<boot dev="cdrom">`), strings.Index(x, `<boot dev="hd">`); j < i {
		t.Errorf("boot order cdrom, disk not kept:\n%s", x)
	}
	m, ok, err := vms.ParseMetadata(x)
	if err != nil || !ok || m.Node != "n1" || m.Generation != 3 || m.RebootCount != 2 {
		t.Errorf("ParseMetadata = %+v, %v, %v", m, ok, err)
	}
	if _, ok, _ := vms.ParseMetadata(`<domain><metadata><other xmlns="urn:x"/></metadata></domain>`); ok {
		t.Errorf("a domain with foreign metadata counts as managed")
	}
	vm.Spec.NICs[0].MAC = ""
	if _, err := vms.DomainXML(vm, "web", nil, vms.Metadata{}, l); err == nil {
		t.Errorf("a NIC without a MAC was accepted")
	}
}
