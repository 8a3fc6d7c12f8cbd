package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/quantix/quantix"
)

func TestLoad(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    FileConfig
		wantErr string
	}{
		{"full", `control_plane = "https://vdc.lab:8443"
join_token = "qx1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.0123456789abcdef"
interface = "eth1"
libvirt_uri = "qemu:///system"
http_listen = "127.0.0.1:9101"
[labels]
rack = "r1"
`, FileConfig{ControlPlane: "https://vdc.lab:8443", JoinToken: "qx1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.0123456789abcdef", Interface: "eth1", LibvirtURI: "qemu:///system", HTTPListen: "127.0.0.1:9101", Labels: map[string]string{"rack": "r1"}}, ""},
		{"empty", "", FileConfig{}, ""},
		{"unknown key", "control_plane = \"http://v\"\ncontrolplane = \"x\"\n", FileConfig{}, `agent.toml:2: unknown key "controlplane"`},
		{"bad url", `control_plane = "vdc.lab:8443"`, FileConfig{}, "control_plane"},
		{"remote libvirt", `libvirt_uri = "qemu+ssh://h/system"`, FileConfig{}, "libvirt_uri"},
		{"bad listen", `http_listen = "9101"`, FileConfig{}, "http_listen"},
		{"wrong type", `interface = 3`, FileConfig{}, "agent.toml"},
		{"syntax", `control_plane = "http://v`, FileConfig{}, "agent.toml:1"},
		{"plain http refused", `control_plane = "http://v:1"`, FileConfig{}, "insecure_plain_http"},
		{"token without pin", `join_token = "0123456789abcdef"`, FileConfig{}, "join_token: malformed join token"},
		{"plain http lab", "control_plane = \"http://v:1\"\ninsecure_plain_http = true\njoin_token = \"lab-token-without-pin\"\n",
			FileConfig{ControlPlane: "http://v:1", InsecurePlainHTTP: true, JoinToken: "lab-token-without-pin"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "agent.toml")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := Load(path)
			if tt.wantErr != "" {
				if !errors.Is(err, quantix.ErrConfig) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Load() error = %v, want quantix.ErrConfig containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Load() mismatch (-want +got):\n%s", diff)
			}
		})
	}
	if f, err := Load(filepath.Join(t.TempDir(), "missing.toml")); err != nil || !cmp.Equal(f, FileConfig{}) {
		t.Errorf("Load(missing) = %+v, %v, want empty and no error", f, err)
	}
}

func TestSaveRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node", "agent.toml")
	in := FileConfig{ControlPlane: "https://10.0.0.2:8080", JoinToken: "qx1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.0123456789abcdef", Labels: map[string]string{"zone": "a"}}
	if err := Save(path, in); err != nil {
		t.Fatal(err)
	}
	out, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(in, out); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	if err := Save(path, FileConfig{ControlPlane: "ftp://x"}); err == nil {
		t.Error("Save(invalid) = nil, want error")
	}
}

func TestResolvePrecedence(t *testing.T) {
	cl := CmdlineFrom(quantix.ParseCmdline("console=ttyS0 quantix.vdc=http://cmdline:1 quantix.token=cmdtok quantix.hostname=n9"))
	tests := []struct {
		name        string
		file, flags FileConfig
		want        FileConfig
	}{
		{"cmdline only", FileConfig{}, FileConfig{},
			FileConfig{ControlPlane: "http://cmdline:1", JoinToken: "cmdtok", LibvirtURI: "qemu:///system"}},
		{"file beats cmdline", FileConfig{ControlPlane: "http://file:2", Interface: "eth0"}, FileConfig{},
			FileConfig{ControlPlane: "http://file:2", JoinToken: "cmdtok", Interface: "eth0", LibvirtURI: "qemu:///system"}},
		{"flags beat file", FileConfig{ControlPlane: "http://file:2", JoinToken: "filetok"}, FileConfig{ControlPlane: "http://flag:3", LibvirtURI: "test:///default"},
			FileConfig{ControlPlane: "http://flag:3", JoinToken: "filetok", LibvirtURI: "test:///default"}},
	}
	for _, tt := range tests {
		got := Resolve(cl, tt.file, tt.flags)
		if diff := cmp.Diff(tt.want, got.FileConfig); diff != "" {
			t.Errorf("%s: Resolve() mismatch (-want +got):\n%s", tt.name, diff)
		}
	}
}

func TestResolveHostname(t *testing.T) {
	osName := func(n string, err error) func() (string, error) {
		return func() (string, error) { return n, err }
	}
	tests := []struct {
		configured string
		os         func() (string, error)
		cmdline    string
		want       string
		wantErr    bool
	}{
		{"", osName("Node1", nil), "n9", "node1", false},
		{"n2", osName("node1", nil), "", "n2", false},
		{"", osName("localhost", nil), "n9", "n9", false},
		{"", osName("(none)", nil), "", "", true},
		{"", osName("", errors.New("boom")), "n9", "n9", false},
		{"bad_name", osName("node1", nil), "", "", true},
	}
	for _, tt := range tests {
		got, err := ResolveHostname(tt.configured, tt.os, tt.cmdline)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ResolveHostname(%q, _, %q) = %q, %v, want %q (error %v)", tt.configured, tt.cmdline, got, err, tt.want, tt.wantErr)
		}
		if err != nil && !errors.Is(err, quantix.ErrConfig) {
			t.Errorf("ResolveHostname error %v is not quantix.ErrConfig", err)
		}
	}
}
