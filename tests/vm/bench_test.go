package vm

import (
	"testing"
	"time"

	"github.com/quantix/quantix"
)

// BenchmarkBootFloor measures the floor for boot times (docs/design.md §12): QEMU start to the
// test initramfs's boot-complete marker, for a bare kernel and for a hybrid GRUB ISO
// booted the four ways the product ISOs are, reported as s/boot. Run it with
//
//	go test -run '^$' -bench BootFloor -benchtime 3x ./tests/vm/
func BenchmarkBootFloor(b *testing.B) {
	if testing.Short() {
		b.Skip("boots QEMU")
	}
	k, initrd := TestKernel(b).Vmlinuz, TestInitramfs(b)
	iso := testISO(b)
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"kernel-bios", Config{Kernel: k, Initrd: initrd}},
		{"cd-bios", Config{ISO: iso}},
		{"cd-uefi", Config{ISO: iso, Firmware: UEFI}},
		{"disk-bios", Config{BootDisk: &Disk{Path: iso, Snapshot: true}}},
		{"disk-uefi", Config{BootDisk: &Disk{Path: iso, Snapshot: true}, Firmware: UEFI}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var total time.Duration
			for b.Loop() {
				cfg := tc.cfg
				cfg.Name = tc.name
				start := time.Now()
				m := Start(b, cfg)
				m.WaitMarker(b, quantix.MarkerBootComplete, 2*bootTimeout)
				total += time.Since(start)
				m.stop()
			}
			b.ReportMetric(total.Seconds()/float64(b.N), "s/boot")
		})
	}
}
