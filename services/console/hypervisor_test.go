package console

import (
	"testing"

	"github.com/quantix/quantix"
)

func TestHypervisorText(t *testing.T) {
	no := false
	for _, tt := range []struct {
		h    quantix.Hypervisor
		want string
	}{
		{quantix.Hypervisor{State: "available", Version: "9.0.0", QEMUVersion: "7.2.22", Accelerator: "tcg", Persistent: &no},
			"available (libvirt 9.0.0, QEMU 7.2.22, tcg); no QUANTIX-DATA: VMs are kept in RAM and lost at reboot"},
		{quantix.Hypervisor{State: "unavailable", Reason: "connection to libvirt lost"}, "unavailable: connection to libvirt lost"},
	} {
		if got := HypervisorText(tt.h); got != tt.want {
			t.Errorf("HypervisorText(%+v) = %q, want %q", tt.h, got, tt.want)
		}
	}
}
