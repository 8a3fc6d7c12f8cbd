package kmod

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const dep = `kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/fs/nls/nls_iso8859-1.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
`

func TestClosure(t *testing.T) {
	d, err := Parse(strings.NewReader(dep))
	if err != nil {
		t.Fatal(err)
	}
	builtin := map[string]bool{"virtio": true}
	tests := []struct {
		names   []string
		want    []string
		wantErr string
	}{
		{names: []string{"ext4"}, want: []string{"kernel/fs/jbd2/jbd2.ko", "kernel/fs/mbcache.ko", "kernel/lib/crc16.ko", "kernel/fs/ext4/ext4.ko"}},
		{names: []string{"nls_iso8859_1"}, want: []string{"kernel/fs/nls/nls_iso8859-1.ko"}},
		{names: []string{"nls-iso8859-1", "virtio"}, want: []string{"kernel/fs/nls/nls_iso8859-1.ko"}},
		{names: []string{"virtio_net", "net_failover"}, want: []string{"kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko"}},
		{names: []string{"virtio-pci", "ext4", "jbd2"}, want: []string{"kernel/drivers/virtio/virtio_pci_modern_dev.ko", "kernel/drivers/virtio/virtio_pci_legacy_dev.ko", "kernel/drivers/virtio/virtio_pci.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/fs/mbcache.ko", "kernel/lib/crc16.ko", "kernel/fs/ext4/ext4.ko"}},
		{names: []string{"e1000", "ext4", "nope"}, wantErr: "not found in modules.dep (nor built in): e1000, nope"},
	}
	for _, tt := range tests {
		got, err := d.Closure(tt.names, builtin)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Closure(%q) = %v, want error %q", tt.names, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("Closure(%q) = %v", tt.names, err)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("Closure(%q) (-want +got):\n%s", tt.names, diff)
		}
	}
}

func TestClosureBrokenDeps(t *testing.T) {
	tests := []struct{ dep, wantErr string }{
		{"a.ko: b.ko\nb.ko: a.ko\n", "dependency cycle through a.ko -> b.ko -> a.ko"},
		{"a.ko: c.ko\n", "a.ko needs c.ko, which is not listed"},
	}
	for _, tt := range tests {
		d, err := Parse(strings.NewReader(tt.dep))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.Closure([]string{"a"}, nil); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("Closure on %q = %v, want %q", tt.dep, err, tt.wantErr)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{"a.ko b.ko\n", "a.ko:\na.ko:\n"} {
		if _, err := Parse(strings.NewReader(in)); err == nil {
			t.Errorf("Parse(%q) = nil error, want one", in)
		}
	}
}

func TestSubsetRoundTrip(t *testing.T) {
	d, _ := Parse(strings.NewReader(dep))
	files, err := d.Closure([]string{"virtio_net"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := Parse(strings.NewReader(string(d.Subset(files))))
	if err != nil {
		t.Fatal(err)
	}
	got, err := d2.Closure([]string{"virtio_net"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(files, got); diff != "" {
		t.Errorf("closure over Subset differs (-want +got):\n%s", diff)
	}
}

const aliases = `# Aliases extracted from modules themselves.
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000002v* virtio_blk
alias virtio:d00000001v* virtio_net
alias scsi:t-0x05* sr_mod
alias scsi:t-0x00* sd_mod
alias fs-ext4 ext4
alias crypto-crc32c crc32c_generic
alias crypto-crc32c crc32c_intel
alias devname:loop-control loop
alias pci:v*d*sv*sd*bc0Csc03i30* xhci_pci
alias fs-iso9660 isofs
`

func TestAliases(t *testing.T) {
	a, err := ParseAliases(strings.NewReader(aliases))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		modalias string
		want     []string
	}{
		{"pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00", []string{"virtio_pci"}},
		{"virtio:d00000002v00001AF4", []string{"virtio_blk"}},
		{"scsi:t-0x05", []string{"sr_mod"}},
		{"crypto-crc32c", []string{"crc32c_generic", "crc32c_intel"}},
		{"fs-ext4", []string{"ext4"}},
		{"pci:v00008086d00007010sv00000000sd00000000bc01sc01i80", nil},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, a.Match(tt.modalias)); diff != "" {
			t.Errorf("Match(%q) (-want +got):\n%s", tt.modalias, diff)
		}
	}
	got := a.DeviceDrivers([]string{"virtio-pci", "virtio_blk", "sr_mod", "ext4", "loop", "crc32c_generic"})
	want := map[string]bool{"virtio_pci": true, "virtio_blk": true, "sr_mod": true}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("DeviceDrivers (-want +got):\n%s", diff)
	}
	sub, err := ParseAliases(strings.NewReader(string(a.Subset([]string{"kernel/fs/ext4/ext4.ko", "kernel/drivers/scsi/sr_mod.ko"}))))
	if err != nil {
		t.Fatal(err)
	}
	if len(sub) != 2 || sub[0].Module != "sr_mod" || sub[1].Module != "ext4" {
		t.Errorf("Subset = %v, want the sr_mod and ext4 lines", sub)
	}
	if _, err := ParseAliases(strings.NewReader("alias x\n")); err == nil {
		t.Error("ParseAliases(bad line) = nil error")
	}
}
