package quantix

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseMountInfo(t *testing.T) {
	const mi = `22 1 0:21 / / rw,relatime - rootfs rootfs rw
25 22 0:23 / /proc rw - proc proc rw
31 22 8:17 / /quantix rw,relatime shared:1 - ext4 /dev/vda2 rw
32 22 8:18 / /var/lib/quantix rw,relatime shared:2 - ext4 /dev/vda3 rw
40 22 0:40 / /mnt/ram rw - tmpfs tmpfs rw
41 22 8:19 / /mnt/with\040space rw - ext4 /dev/vdb1 rw
42 40 0:41 / /mnt/ram rw - ext4 /dev/vdc rw
`
	tests := []struct {
		dir            string
		want           MountFacts
		wantPersistent bool
	}{
		{"/var/lib/quantix", MountFacts{true, "/dev/vda3", "ext4"}, true},
		{"/var/lib/quantix/", MountFacts{true, "/dev/vda3", "ext4"}, true},
		{"/var/lib", MountFacts{}, false},
		{"/", MountFacts{true, "rootfs", "rootfs"}, false},
		{"/mnt/with space", MountFacts{true, "/dev/vdb1", "ext4"}, true},
		{"/mnt/ram", MountFacts{true, "/dev/vdc", "ext4"}, true}, // the last mount hides the tmpfs
	}
	for _, tt := range tests {
		got := ParseMountInfo([]byte(mi), tt.dir)
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("ParseMountInfo(%q) mismatch (-want +got):\n%s", tt.dir, diff)
		}
		if got.Persistent() != tt.wantPersistent {
			t.Errorf("ParseMountInfo(%q).Persistent() = %v, want %v", tt.dir, got.Persistent(), tt.wantPersistent)
		}
	}
	tmpfs := MountFacts{Mounted: true, Source: "/dev/shm", FSType: "tmpfs"}
	if tmpfs.Persistent() {
		t.Errorf("%+v.Persistent() = true, want false", tmpfs)
	}
}
