package e2e

import (
	"context"
	"fmt"
	"testing"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/tests/vm"
)

// hypervisor (scenario 1c): node-a, booted with an empty QUANTIX-DATA disk, is a
// hypervisor host: its libvirtd comes up after boot-complete, and the vDC lists the
// node with the hypervisor available (libvirt and QEMU versions, the accelerator,
// persistent storage) and its default pool on the data disk, sized from it. The
// management address sits on br0 over the NIC. The pool's UUID is kept for the
// check after the reset (scenario 5): definitions live on QUANTIX-DATA.
func (s *suite) hypervisor(t *testing.T) {
	s.needNodeA(t)
	m := s.lab.Node
	lv := m.WaitMarker(t, quantix.MarkerReady, NodeBootTimeout, "service", "libvirtd")
	if lv.Get("persistent") != "true" {
		t.Errorf("libvirtd ready marker %s: want persistent=true (QUANTIX-DATA mounted)", lv)
	}
	t.Logf("node-a: libvirtd ready at guest uptime %s s (service start to ready %s s, first API call %s s)",
		lv.Get("uptime"), lv.Get("seconds"), lv.Get("first_call_seconds"))
	if s.aIface != "br0" {
		t.Errorf("node-a's network marker names iface %q, want br0 (the management bridge)", s.aIface)
	}
	s.checkHypervisor(t, "after the first boot")
	s.aPool = s.waitDefaultPool(t, "after the first boot")
	t.Logf("node-a default pool: %s, capacity %d MiB, allocation %d MiB, available %d MiB", s.aPool.UUID, s.aPool.CapacityBytes>>20, s.aPool.AllocationBytes>>20, s.aPool.AvailableBytes>>20)
	if s.aPool.AllocationBytes <= 0 || s.aPool.AllocationBytes > s.aPool.CapacityBytes {
		t.Errorf("node-a default pool allocation = %d bytes, want more than 0 (the file system's own use) and at most the capacity %d", s.aPool.AllocationBytes, s.aPool.CapacityBytes)
	}
}

// checkHypervisor waits until the vDC shows node-a's hypervisor available with
// what the agent must report, and returns the node.
func (s *suite) checkHypervisor(t *testing.T, when string) quantix.Node {
	t.Helper()
	n, _ := s.waitNode(t, "node-a's hypervisor available "+when, hostA, APITimeout, func(n quantix.Node) bool {
		return n.Hypervisor.State == quantix.HypervisorAvailable && n.Hypervisor.QEMUVersion != ""
	})
	h := n.Hypervisor
	if h.Version == "" || h.URI != "qemu:///system" || h.Persistent == nil || !*h.Persistent {
		t.Errorf("%s: hypervisor %+v, want libvirt's version, qemu:///system and persistent storage", when, h)
	}
	// The lab's node runs under TCG without SVM in its CPU model: its guests can
	// only be emulated too, and the probe must say so.
	if s.lab.Node.Accel() == vm.AccelTCG && h.Accelerator != quantix.AccelTCG {
		t.Errorf("%s: accelerator %q (%s), want tcg inside a TCG machine", when, h.Accelerator, h.AcceleratorReason)
	}
	t.Logf("%s: hypervisor %s, libvirt %s, QEMU %s, accelerator %s (%s); node memory used %s of %s", when, h.State,
		h.Version, h.QEMUVersion, h.Accelerator, h.AcceleratorReason, mib(n.MemoryUsedBytes), mib(&n.MemoryBytes))
	return n
}

func mib(b *int64) string {
	if b == nil {
		return "?"
	}
	return fmt.Sprintf("%d MiB", *b>>20)
}

// waitDefaultPool waits for node-a's running default pool at the vDC; its capacity
// must be the data disk's (less the filesystem's own overhead).
func (s *suite) waitDefaultPool(t *testing.T, when string) quantix.InventoryPool {
	t.Helper()
	var pool quantix.InventoryPool
	poll(t, "node-a's default pool "+when, APITimeout, func(ctx context.Context) (bool, string, error) {
		pools, err := s.lab.VDC.Pools(ctx)
		if err != nil {
			return false, "", err
		}
		for _, p := range pools {
			if p.NodeID == s.aID && p.Name == quantix.DefaultPool && !p.Lost {
				pool = p
				return p.State == "running", fmt.Sprintf("pool %+v", p.StoragePool), nil
			}
		}
		return false, fmt.Sprintf("%d pools, none named default on node-a", len(pools)), nil
	})
	if pool.Path != quantix.DefaultPoolDir || pool.Type != "dir" {
		t.Errorf("%s: default pool %+v, want a dir pool at %s", when, pool.StoragePool, quantix.DefaultPoolDir)
	}
	if c := pool.CapacityBytes; c < NodeDataSize*9/10 || c > NodeDataSize {
		t.Errorf("%s: default pool capacity %d bytes, want the %d-byte data disk less ext4's overhead", when, c, NodeDataSize)
	}
	return pool
}

// hypervisorAfterReset checks, after node-a's reset (scenario 5), that the
// hypervisor is available again and the default pool is the one defined at the
// first boot (the same UUID: libvirt's definitions are on QUANTIX-DATA).
func (s *suite) hypervisorAfterReset(t *testing.T) {
	t.Helper()
	if s.aPool.UUID == "" {
		t.Log("scenario 1c did not record the default pool; skipping the check after the reset")
		return
	}
	s.checkHypervisor(t, "after the reset")
	if p := s.waitDefaultPool(t, "after the reset"); p.UUID != s.aPool.UUID {
		t.Errorf("after the reset the default pool is %s, want the one defined at the first boot (%s)", p.UUID, s.aPool.UUID)
	}
}
