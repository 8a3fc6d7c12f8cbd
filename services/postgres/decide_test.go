package postgres

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix/quantix"
)

func TestDecideCluster(t *testing.T) {
	cluster := []string{"PG_VERSION", "base", "global", "pg_wal", "postgresql.conf"}
	tests := []struct {
		name    string
		facts   ClusterFacts
		want    ClusterAction
		wantErr []string // substrings of the error
	}{
		{"absent", ClusterFacts{Path: "/d"}, ClusterInit, nil},
		{"empty folder", ClusterFacts{Path: "/d", Exists: true}, ClusterInit, nil},
		{"cluster of our major", ClusterFacts{Path: "/d", Exists: true, Entries: cluster, HasPGVersion: true, PGVersion: "15"}, ClusterUse, nil},
		{"older major", ClusterFacts{Path: "/d", Exists: true, Entries: cluster, HasPGVersion: true, PGVersion: "14"}, ClusterRefuse,
			[]string{"/d", "PostgreSQL 14 cluster", "runs PostgreSQL 15", "pg_upgrade from 14 to 15", "will not be touched"}},
		{"newer major", ClusterFacts{Path: "/d", Exists: true, Entries: cluster, HasPGVersion: true, PGVersion: "16"}, ClusterRefuse,
			[]string{"PostgreSQL 16 cluster", "runs PostgreSQL 15"}},
		{"pre-10 version string", ClusterFacts{Path: "/d", Exists: true, Entries: cluster, HasPGVersion: true, PGVersion: "9.6"}, ClusterRefuse,
			[]string{`PG_VERSION of "9.6"`}},
		{"empty PG_VERSION", ClusterFacts{Path: "/d", Exists: true, Entries: cluster, HasPGVersion: true, PGVersion: ""}, ClusterRefuse,
			[]string{`PG_VERSION of ""`}},
		{"foreign files", ClusterFacts{Path: "/d", Exists: true, Entries: []string{"a.txt", "b", "c", "d", "e", "f", "g"}}, ClusterRefuse,
			[]string{"not a PostgreSQL cluster", "a.txt, b, c, d, e and 2 more", "refusing to touch"}},
		{"lost+found only", ClusterFacts{Path: "/d", Exists: true, Entries: []string{"lost+found"}}, ClusterRefuse,
			[]string{"lost+found"}},
		{"a file, not a folder", ClusterFacts{Path: "/d", Exists: true, NotDir: true}, ClusterRefuse,
			[]string{"is a file"}},
		{"damaged cluster", ClusterFacts{Path: "/d", Exists: true, Entries: []string{"PG_VERSION", "base"}, HasPGVersion: true, PGVersion: "15"}, ClusterRefuse,
			[]string{"no global/", "damaged"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecideCluster(tt.facts, "15")
			if got != tt.want {
				t.Errorf("DecideCluster(%+v) = %v, want %v", tt.facts, got, tt.want)
			}
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("DecideCluster(%+v) error %v, want none", tt.facts, err)
				}
				return
			}
			if err == nil || !errors.Is(err, quantix.ErrConfig) {
				t.Fatalf("DecideCluster(%+v) error %v, want one wrapping quantix.ErrConfig", tt.facts, err)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q lacks %q", err, s)
				}
			}
		})
	}
}

// TestObserveCluster checks that the facts come from real folders, for each shape the
// decision table knows.
func TestObserveCluster(t *testing.T) {
	root := t.TempDir()
	mk := func(name string, files map[string]string) string {
		dir := filepath.Join(root, name)
		for f, content := range files {
			p := filepath.Join(dir, f)
			if strings.HasSuffix(f, "/") {
				if err := os.MkdirAll(p, 0o755); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	if err := os.Mkdir(filepath.Join(root, "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "file"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path string
		want ClusterAction
	}{
		{filepath.Join(root, "absent"), ClusterInit},
		{filepath.Join(root, "empty"), ClusterInit},
		{filepath.Join(root, "file"), ClusterRefuse},
		{mk("pg15", map[string]string{"PG_VERSION": "15\n", "base/": "", "global/": "", "pg_wal/": ""}), ClusterUse},
		{mk("pg14", map[string]string{"PG_VERSION": "14\n", "base/": "", "global/": "", "pg_wal/": ""}), ClusterRefuse},
		{mk("foreign", map[string]string{"photo.jpg": "jpeg"}), ClusterRefuse},
	}
	for _, tt := range tests {
		f, err := ObserveCluster(tt.path)
		if err != nil {
			t.Fatalf("ObserveCluster(%s): %v", tt.path, err)
		}
		if got, _ := DecideCluster(f, "15"); got != tt.want {
			t.Errorf("DecideCluster(ObserveCluster(%s) = %+v) = %v, want %v", tt.path, f, got, tt.want)
		}
	}
}

func TestDecideDisk(t *testing.T) {
	tests := []struct {
		name    string
		facts   DiskFacts
		want    DiskAction
		dev     string
		wantErr string
	}{
		{"nothing at all: RAM", DiskFacts{}, DiskNone, "", ""},
		{"labelled data disk", DiskFacts{Labelled: []string{"/dev/vdb1"}}, DiskUse, "/dev/vdb1", ""},
		{"labelled wins over configured", DiskFacts{Labelled: []string{"/dev/vdb1"}, Configured: "/dev/vdc", FormatAllowed: true}, DiskUse, "/dev/vdb1", ""},
		{"two labelled", DiskFacts{Labelled: []string{"/dev/vdb1", "/dev/vdc1"}}, DiskRefuse, "", "2 filesystems are labelled QUANTIX-DATA (/dev/vdb1, /dev/vdc1)"},
		{"blank configured, allowed", DiskFacts{Configured: "/dev/vdb", FormatAllowed: true}, DiskFormat, "/dev/vdb", ""},
		{"blank configured, not allowed", DiskFacts{Configured: "/dev/vdb"}, DiskRefuse, "", "set format_blank_data = true"},
		{"foreign data, allowed", DiskFacts{Configured: "/dev/vdb", ConfiguredContent: "an XFS filesystem", FormatAllowed: true}, DiskRefuse, "", "not blank (an XFS filesystem): refusing to format"},
		{"configured missing", DiskFacts{Configured: "/dev/vdz", ConfiguredMissing: true, FormatAllowed: true}, DiskRefuse, "", "/dev/vdz does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, dev, err := DecideDisk(tt.facts)
			if got != tt.want || dev != tt.dev {
				t.Errorf("DecideDisk(%+v) = %v, %q, want %v, %q", tt.facts, got, dev, tt.want, tt.dev)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("DecideDisk(%+v) error %v, want none", tt.facts, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, quantix.ErrConfig)):
				t.Errorf("DecideDisk(%+v) error %v, want quantix.ErrConfig containing %q", tt.facts, err, tt.wantErr)
			}
		})
	}
}

func TestDescribeContent(t *testing.T) {
	const size = 8 << 20
	at := func(off int64, b string) func([]byte) {
		return func(d []byte) { copy(d[off:], b) }
	}
	ext4 := func(d []byte) {
		copy(d[1080:], "\x53\xef")
		copy(d[1024+120:], "OLDDATA")
	}
	tests := []struct {
		name string
		edit func([]byte)
		want string
	}{
		{"zeros", func([]byte) {}, ""},
		{"byte in the middle is not looked at", at(4<<20, "x"), ""},
		{"GPT", at(512, "EFI PART"), "a GPT partition table"},
		{"MBR", at(510, "\x55\xaa"), "an MBR partition table or boot sector"},
		{"ext4 with label", ext4, `an ext2/3/4 filesystem labelled "OLDDATA"`},
		{"XFS", at(0, "XFSB"), "an XFS filesystem"},
		{"LUKS", at(0, "LUKS\xba\xbe"), "a LUKS encrypted volume"},
		{"btrfs", at(65600, "_BHRfS_M"), "a btrfs filesystem"},
		{"ISO 9660", at(32769, "CD001"), "an ISO 9660 filesystem"},
		{"swap", at(4086, "SWAPSPACE2"), "a swap area"},
		{"unknown data at start", at(700000, "?"), "data at byte 700000"},
		{"backup GPT at end", at(size-512, "EFI PART"), "a backup GPT partition table at the end"},
		{"data near the end", at(size-3, "z"), "data at byte 8388605 (near the end)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := make([]byte, size)
			tt.edit(d)
			got, err := DescribeContent(bytes.NewReader(d), size)
			if err != nil || got != tt.want {
				t.Errorf("DescribeContent() = %q, %v, want %q", got, err, tt.want)
			}
		})
	}
	// Devices smaller than the probe span are read whole.
	small := make([]byte, 4096)
	if got, err := DescribeContent(bytes.NewReader(small), int64(len(small))); got != "" || err != nil {
		t.Errorf("DescribeContent(4 KiB of zeros) = %q, %v, want blank", got, err)
	}
	small[4095] = 1
	if got, _ := DescribeContent(bytes.NewReader(small), int64(len(small))); got == "" {
		t.Errorf("DescribeContent(4 KiB ending in 1) = blank, want not blank")
	}
}

func TestParseOutputs(t *testing.T) {
	versions := []struct {
		out, want string
		ok        bool
	}{
		{"postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)\n", "15", true},
		{"postgres (PostgreSQL) 16beta1\n", "", false},
		{"postgres (PostgreSQL) 17.0\n", "17", true},
		{"bash: postgres: not found\n", "", false},
	}
	for _, v := range versions {
		got, err := parseVersion(v.out)
		if got != v.want || (err == nil) != v.ok {
			t.Errorf("parseVersion(%q) = %q, %v, want %q (ok %v)", v.out, got, err, v.want, v.ok)
		}
	}
	got, err := parseClusterState("pg_control version number:            1300\nDatabase cluster state:               in production\npg_control last modified: x\n")
	if got != "in production" || err != nil {
		t.Errorf("parseClusterState() = %q, %v, want \"in production\"", got, err)
	}
	if _, err := parseClusterState("nothing\n"); err == nil {
		t.Errorf("parseClusterState(no state) = nil error, want one")
	}
}

func TestConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.toml", "data_root = \"/srv/q\"\nport = 5433\nformat_blank_data = true\ndata_device = \"/dev/vdb\"\nstart_timeout = \"30s\"\n")
	cfg, err := LoadConfigFile(good, DefaultConfig(), false)
	if err != nil {
		t.Fatalf("LoadConfigFile(good): %v", err)
	}
	cfg = cfg.withDerived()
	if cfg.Port != 5433 || !cfg.FormatBlank || cfg.Device != "/dev/vdb" || cfg.StartTimeout.Seconds() != 30 ||
		cfg.DataDir != "/srv/q/postgresql" || cfg.SuperuserPasswordFile != "/srv/q/postgresql-superuser.password" ||
		cfg.BinDir != DefaultBinDir || cfg.SocketDir != DefaultSocketDir {
		t.Errorf("LoadConfigFile(good) = %+v", cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate(good) = %v", err)
	}
	if _, err := LoadConfigFile(filepath.Join(dir, "absent.toml"), DefaultConfig(), true); err != nil {
		t.Errorf("LoadConfigFile(absent, optional) = %v, want nil", err)
	}
	bad := []struct {
		name, content, want string
	}{
		{"unknown.toml", "port = 5432\nfsync = false\n", `unknown.toml:2: unknown key "fsync"`},
		{"type.toml", "port = \"x\"\n", "type.toml"},
		{"duration.toml", "stop_timeout = \"soon\"\n", "soon"},
	}
	for _, b := range bad {
		_, err := LoadConfigFile(write(b.name, b.content), DefaultConfig(), true)
		if err == nil || !strings.Contains(err.Error(), b.want) || !errors.Is(err, quantix.ErrConfig) {
			t.Errorf("LoadConfigFile(%s) = %v, want quantix.ErrConfig containing %q", b.name, err, b.want)
		}
	}
	invalid := []struct {
		edit func(*Config)
		want string
	}{
		{func(c *Config) { c.Port = 0 }, "port 0"},
		{func(c *Config) { c.BinDir = "bin" }, "bin_dir must be an absolute path"},
		{func(c *Config) { c.OSUser = "root" }, "refuses to run as root"},
		{func(c *Config) { c.DataDir = c.DataRoot }, "below data_root"},
		{func(c *Config) { c.SuperuserPasswordFile = "/var/lib/quantix/postgresql/pw" }, "must not be inside data_dir"},
		{func(c *Config) { c.SocketDir = "/" + strings.Repeat("s", 100) }, "too long"},
		{func(c *Config) { c.Device = "vdb" }, "data_device must be an absolute path"},
	}
	for _, iv := range invalid {
		c := DefaultConfig()
		iv.edit(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), iv.want) || !errors.Is(err, quantix.ErrConfig) {
			t.Errorf("Validate() = %v, want quantix.ErrConfig containing %q", err, iv.want)
		}
	}
}
