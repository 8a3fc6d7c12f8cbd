package initd_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/initd"
)

func TestChooseHostname(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("Node-7\nignored\n"), 0o644)
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("bad_name\n"), 0o644)
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		file, cmdline, want, source string
		warnings                    int
	}{
		{good, "quantix.hostname=cmd ip=::::iphost::", "node-7", good, 0},
		{missing, "quantix.hostname=Cmd-Host ip=::::iphost::", "cmd-host", "kernel command line quantix.hostname", 0},
		{missing, "ip=10.0.0.5::10.0.0.1:255.255.255.0:IP-Host:eth0:off", "ip-host", "kernel command line ip=", 0},
		{missing, "ip=dhcp", "quantix", "image default", 0},
		{bad, "quantix.hostname=-x", "quantix", "image default", 2},
		{bad, "quantix.hostname=ok", "ok", "kernel command line quantix.hostname", 1},
	}
	for _, tt := range tests {
		name, source, warnings := initd.ChooseHostname(tt.file, quantix.ParseCmdline(tt.cmdline), "quantix")
		if name != tt.want || source != tt.source || len(warnings) != tt.warnings {
			t.Errorf("initd.ChooseHostname(%s, %q) = %q, %q, %q; want %q, %q, %d warnings", filepath.Base(tt.file), tt.cmdline, name, source, warnings, tt.want, tt.source, tt.warnings)
		}
	}
}
