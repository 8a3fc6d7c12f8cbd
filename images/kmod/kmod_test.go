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
