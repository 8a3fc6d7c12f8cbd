package quantix

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestMarkerRoundTrip(t *testing.T) {
	tests := []string{
		BootMarker("qvdc", "1.2.3"),
		ReadyMarker("network", "iface", "eth0", "addr", "10.0.0.5/24", "source", "static"),
		ReadyMarker("agent", "node_id", "6f1c", "registration", RegistrationReregistered),
		BootCompleteMarker(12.3456),
		FatalMarker("postgres", errors.New(`initdb: exit status 1: "bad" = worse`)),
		WarningMarker("init", "no QUANTIX-CFG found; nothing will persist"),
	}
	for _, line := range tests {
		m, ok := ParseMarker("[   12.3] noise " + line + "\r\n")
		if !ok {
			t.Fatalf("ParseMarker(%q) failed", line)
		}
		if got := m.String(); got != line {
			t.Errorf("ParseMarker(%q).String() = %q", line, got)
		}
	}
	m, _ := ParseMarker(FatalMarker("postgres", errors.New("a b=c")))
	if m.Kind != MarkerFatal || m.Get("err") != "a b=c" || m.Get("service") != "postgres" {
		t.Errorf("fatal marker parsed as %+v", m)
	}
	if got := BootCompleteMarker(3); got != "QUANTIX: boot-complete seconds=3.00" {
		t.Errorf("BootCompleteMarker(3) = %q", got)
	}
	for _, bad := range []string{"hello", "QUANTIX: ", "QUANTIX: ready service", `QUANTIX: ready a="unterminated`} {
		if m, ok := ParseMarker(bad); ok {
			t.Errorf("ParseMarker(%q) = %+v, want no marker", bad, m)
		}
	}
}

func TestValidateHostname(t *testing.T) {
	good := []string{"a", "node-1", "Node1.Example.COM", strings.Repeat("a", 63), strings.Repeat(strings.Repeat("a", 63)+".", 3) + strings.Repeat("a", 61)}
	for _, h := range good {
		if err := ValidateHostname(h); err != nil {
			t.Errorf("ValidateHostname(%q) = %v, want nil", h, err)
		}
	}
	bad := []string{"", "-a", "a-", "a..b", ".a", "a_b", "a b", "ü", strings.Repeat("a", 64), strings.Repeat(strings.Repeat("a", 63)+".", 4)}
	for _, h := range bad {
		if err := ValidateHostname(h); !errors.Is(err, ErrInvalidHostname) {
			t.Errorf("ValidateHostname(%q) = %v, want ErrInvalidHostname", h, err)
		}
	}
	if got, _ := NormalizeHostname("NoDe-1"); got != "node-1" {
		t.Errorf("NormalizeHostname(NoDe-1) = %q", got)
	}
}

func TestDecodeTOMLStrict(t *testing.T) {
	type static struct {
		Address string `toml:"address"`
	}
	type cfg struct {
		Mode   string            `toml:"mode"`
		Static static            `toml:"static"`
		Labels map[string]string `toml:"labels"`
	}
	tests := []struct {
		in      string
		wantErr string
	}{
		{"mode = \"dhcp\"\n[static]\naddress = \"10.0.0.5/24\"\n", ""},
		{"mode = \"dhcp\"\n\n[static]\nadress = \"x\"\n", `net.toml:4: unknown key "static.adress"`},
		{"mode = \"dhcp\"\nmood = 1\n", `net.toml:2: unknown key "mood"`},
		{"mode = \n", "net.toml:1:"},
		{"mode = 5\n", "net.toml"},
		{"mode = \"dhcp\"\nstatic = \"x\"\n", `line 2`},
		{"labels = 3\n", `net.toml:1: key "labels" must be a table, found integer`},
	}
	for _, tt := range tests {
		var c cfg
		err := DecodeTOML("net.toml", []byte(tt.in), &c)
		if tt.wantErr == "" {
			if err != nil {
				t.Errorf("DecodeTOML(%q) = %v, want nil", tt.in, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("DecodeTOML(%q) = %v, want error containing %q", tt.in, err, tt.wantErr)
		}
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "sub", "identity.toml")
	if err := WriteFileAtomic(p, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(p, []byte("two"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	st, _ := os.Stat(p)
	if string(b) != "two" || st.Mode().Perm() != 0o600 {
		t.Errorf("file = %q mode %v, want \"two\" 0600", b, st.Mode().Perm())
	}
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Errorf("folder holds %d entries, want 1 (no temp files left)", len(ents))
	}
}

func TestFileSHA256(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("abc"), 0o644); err != nil {
		t.Fatal(err)
	}
	// sha256("abc"), FIPS 180-2 appendix B.1.
	const want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	if got, err := FileSHA256(p); err != nil || got != want {
		t.Errorf("FileSHA256 = %q, %v; want %q", got, err, want)
	}
	if _, err := FileSHA256(p + ".missing"); err == nil {
		t.Errorf("FileSHA256 of a missing file: no error")
	}
}

func TestParseCmdline(t *testing.T) {
	c := ParseCmdline(`console=ttyS0 quiet ip=10.0.0.5::10.0.0.1:255.255.255.0:node1:eth0:off quantix.hostname="a b" quantix.vdc=http://x:8443 -- quantix.token=no` + "\n")
	got := map[string]string{}
	for _, k := range c.Keys() {
		got[k] = c.Value(k)
	}
	want := map[string]string{"console": "ttyS0", "quiet": "", "ip": "10.0.0.5::10.0.0.1:255.255.255.0:node1:eth0:off", "quantix.hostname": "a b", "quantix.vdc": "http://x:8443"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ParseCmdline mismatch (-want +got):\n%s", diff)
	}
}

func TestStateHashOrderIndependent(t *testing.T) {
	a := []VM{{UUID: "1", Name: "a"}, {UUID: "2", Name: "b"}}
	b := []VM{{UUID: "2", Name: "b"}, {UUID: "1", Name: "a"}}
	if StateHash(a, nil) != StateHash(b, []StoragePool{}) {
		t.Error("StateHash depends on order")
	}
	b[0].PowerState = PowerRunning
	if StateHash(a, nil) == StateHash(b, nil) {
		t.Error("StateHash ignores a power state change")
	}
}

func TestImageConfigRoundTrip(t *testing.T) {
	c := &ImageConfig{
		Image: "qvdc", Version: "0.1.0", VolumeLabel: "QVDC", Hostname: "qvdc", KernelRelease: "6.1.0-56-amd64",
		Modules: []string{"virtio_pci", "nls_iso8859-1"},
		Services: []Service{
			{Name: "network", Command: "/bbin/qx-net", Args: []string{"serve"}},
			{Name: "vdc", Command: "/bbin/qx-vdc", Args: []string{"serve"}, DependsOn: []string{"network"}, Ready: ReadyOnMarker},
		},
	}
	p := filepath.Join(t.TempDir(), "image.toml")
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := LoadImageConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(c, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	os.WriteFile(p, []byte("image = \"x\"\nversion = \"1\"\nhostname = \"h\"\nshell = \"/bin/sh\"\n"), 0o644)
	if _, err := LoadImageConfig(p); err == nil {
		t.Error("LoadImageConfig(unknown key) = nil error")
	}
}

func TestCmdlineString(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"ip=dhcp quiet quantix.hostname=\"a b\" -- init args", "ip=dhcp quiet quantix.hostname=\"a b\""},
		{"console=ttyS0 panic=10 console=tty0", "console=tty0 panic=10"},
	} {
		if got := ParseCmdline(c.in).String(); got != c.want {
			t.Errorf("ParseCmdline(%q).String() = %q, want %q", c.in, got, c.want)
		}
	}
	c := ParseCmdline("a=1 quantix.disk=old b").Without("b").With(ParamDisk, "new").With("c", "2")
	if got, want := c.String(), "a=1 quantix.disk=new c=2"; got != want {
		t.Errorf("Without/With = %q, want %q", got, want)
	}
}

func TestConfigError(t *testing.T) {
	err := ConfigError(errors.New("network.toml:3: bad"))
	if !errors.Is(err, ErrConfig) || err.Error() != "network.toml:3: bad" {
		t.Errorf("ConfigError = %q (Is ErrConfig: %v), want the message unchanged and ErrConfig", err, errors.Is(err, ErrConfig))
	}
	if ConfigError(nil) != nil {
		t.Error("ConfigError(nil) != nil")
	}
}

func TestParseVDCURLs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // joined by spaces; "" = an error
	}{
		{"http://10.0.0.2:8080", "http://10.0.0.2:8080"},
		{"https://a:8080/, https://b:8080", "https://a:8080 https://b:8080"},
		{"https://a:8080,https://a:8080", ""},
		{"https://a:8080,", ""},
		{"ftp://a", ""},
		{"https://a:8080/api", ""},
		{"https://a:8080?x=1", ""},
		{"https://user@a:8080", ""},
		{"http://", ""},
		{manyURLs(MaxVDCURLs + 1), ""},
	} {
		got, err := ParseVDCURLs(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("ParseVDCURLs(%q) = %q, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || strings.Join(got, " ") != tc.want {
			t.Errorf("ParseVDCURLs(%q) = %q, %v, want %q", tc.in, got, err, tc.want)
		}
	}
}

func manyURLs(n int) string {
	var us []string
	for i := range n {
		us = append(us, fmt.Sprintf("http://vdc-%d:8080", i))
	}
	return strings.Join(us, ",")
}
