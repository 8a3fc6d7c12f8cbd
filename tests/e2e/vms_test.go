package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/tests/guest"
	"github.com/quantix/quantix/tests/vm"
)

// The VM of the VM scenarios: a boot sector that prints vmMarker on COM1, on a
// 1 MiB raw disk, booting from the network first (iPXE asks the lab's DHCP for a
// lease through br0, finds nothing to boot and falls back to the disk).
const (
	vmName   = "e2e-vm"
	vmMarker = "QUANTIX-E2E-GUEST-OK"
	// vmTimeout bounds a VM change under nested TCG (measured: create to running
	// at the vDC in tens of seconds; the guest's firmware is emulated twice).
	vmTimeout = 5 * time.Minute
)

// qxCtl runs out/qx-ctl, the operator's CLI that make iso leaves, against the
// lab vDC through the suite's proxy over the workstation (s.ctlURL), with the
// admin token in its environment as an operator would; it fails t unless qx-ctl
// exits 0.
func (s *suite) qxCtl(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := filepath.Abs(filepath.Join("..", "..", "out", "qx-ctl"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s: %v (make iso builds it)", bin, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout+time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--url", s.ctlURL, "--timeout", "60s"}, args...)...)
	cmd.Env = append(os.Environ(), "QX_ADMIN_TOKEN="+AdminToken, "QX_ADMIN_TOKEN_FILE=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("qx-ctl %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// managedVM reads the scenario VM through the API.
func (s *suite) managedVM(t *testing.T) quantix.ManagedVM {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vm, err := s.lab.VDC.VM(ctx, vmName)
	if err != nil {
		t.Fatalf("vm %s: %v", vmName, err)
	}
	return vm
}

// waitVM waits until the vDC shows the VM converged to wanted and observed state.
func (s *suite) waitVM(t *testing.T, what, observed string) quantix.ManagedVM {
	t.Helper()
	var vm quantix.ManagedVM
	d := poll(t, what, vmTimeout, func(ctx context.Context) (bool, string, error) {
		var err error
		vm, err = s.lab.VDC.VM(ctx, vmName)
		if err != nil {
			return false, "", err
		}
		return vm.Observed == observed && vm.AppliedGeneration >= vm.Generation,
			fmt.Sprintf("wanted %s, observed %s %s, generation %d applied %d", vm.Wanted, vm.Observed, vm.Error, vm.Generation, vm.AppliedGeneration), nil
	})
	t.Logf("%s: %v", what, d.Round(100*time.Millisecond))
	return vm
}

// waitConsole waits until the VM's console output at the vDC holds marker.
func (s *suite) waitConsole(t *testing.T, what string) {
	t.Helper()
	d := poll(t, what, vmTimeout, func(ctx context.Context) (bool, string, error) {
		b, err := s.lab.VDC.VMConsole(ctx, vmName)
		return bytes.Contains(b, []byte(vmMarker)), fmt.Sprintf("%d bytes: %q", len(b), tailString(string(b), 200)), err
	})
	t.Logf("%s: %v", what, d.Round(100*time.Millisecond))
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// 1d. A VM from the vDC (docs/design.md §14): qx-ctl uploads the boot-sector image
// and creates a VM on node-a; the vDC shows it running, its console output at the
// vDC shows the guest's marker, its NIC on br0 gets a lease on the lab segment
// (iPXE's DHCP), stop brings it to stopped and start to running again.
func (s *suite) vmLifecycle(t *testing.T) {
	s.needNodeA(t)
	bs, err := guest.BootSector(vmMarker)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "e2e-guest.img")
	if err := os.WriteFile(img, append(bs, make([]byte, 1<<20-len(bs))...), 0o644); err != nil {
		t.Fatal(err)
	}
	s.qxCtl(t, "images", "upload", img, "--name", "e2e-guest", "--format", "raw")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	imgs, err := s.lab.VDC.Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var imageID string
	for _, im := range imgs {
		if im.Name == "e2e-guest" {
			imageID = im.ID
		}
	}
	if imageID == "" {
		t.Fatalf("the uploaded image is not in the library: %+v", imgs)
	}

	t0 := time.Now()
	s.qxCtl(t, "vms", "create", vmName, "--vcpus", "1", "--memory", "32M", "--disk", "image:"+imageID,
		"--nic", quantix.NetworkManagement, "--boot", "network,disk", "--node", hostA)
	vm := s.waitVM(t, "create to observed running at the vDC", quantix.ObservedRunning)
	t.Logf("create to running: %v", time.Since(t0).Round(100*time.Millisecond))
	if vm.NodeID != s.aID || len(vm.Spec.NICs) != 1 {
		t.Fatalf("vm on %s with NICs %+v, want on node-a (%s) with one NIC", vm.NodeID, vm.Spec.NICs, s.aID)
	}
	s.vmUUID = vm.UUID
	mac, err := net.ParseMAC(vm.Spec.NICs[0].MAC)
	if err != nil {
		t.Fatal(err)
	}
	s.vmMAC = mac
	s.waitConsole(t, "the guest's marker in its console output at the vDC")
	lease := s.lab.Hub.WaitLease(t, mac, vmTimeout)
	t.Logf("the VM's NIC on br0 got %s from the lab segment's DHCP (%s)", lease.IP, mac)

	// A boot sector ignores ACPI: stop waits its stop timeout, then forces.
	pctx, pcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer pcancel()
	if _, err := s.lab.VDC.UpdateVM(pctx, vmName, map[string]any{"stop_timeout_seconds": 5}); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	s.qxCtl(t, "vms", "stop", vmName, "--wait", "--wait-timeout", vmTimeout.String())
	if vm := s.managedVM(t); vm.Observed != quantix.ObservedStopped {
		t.Errorf("after qx-ctl vms stop --wait: observed %s, want stopped", vm.Observed)
	}
	t.Logf("stop (ACPI, forced after 5 s) to observed stopped: %v", time.Since(t1).Round(100*time.Millisecond))
	t2 := time.Now()
	s.qxCtl(t, "vms", "start", vmName, "--wait", "--wait-timeout", vmTimeout.String())
	if vm := s.managedVM(t); vm.Observed != quantix.ObservedRunning || vm.UUID != s.vmUUID {
		t.Errorf("after qx-ctl vms start --wait: %s observed %s, want %s running", vm.UUID, vm.Observed, s.vmUUID)
	}
	t.Logf("start to observed running: %v", time.Since(t2).Round(100*time.Millisecond))
}

// vmAfterNodeReboot is called from scenario 7 while the QvDC is powered off: node-a
// resets, and the VM must run again by itself (libvirt autostart mirrors the wanted
// state) with no vDC to ask; its NIC asks the lab's DHCP again, which proves it.
func (s *suite) vmAfterNodeReboot(t *testing.T) {
	t.Helper()
	if s.vmUUID == "" {
		t.Log("scenario 1d made no VM; no VM to check across the node reboot")
		return
	}
	m := s.lab.Node
	t0 := time.Now()
	m.Reboot(t)
	m.Expect(t, "--- vmtest: starting node again ---", 10*time.Second)
	// Not boot-complete: that waits for the agent's registration, and the vDC is off.
	m.ExpectAll(t, NodeBootTimeout, vm.MatchMarker(quantix.MarkerReady, "service", "libvirtd"))
	d := poll(t, "the VM's NIC on the segment again after node-a's reset, the vDC off", vmTimeout,
		func(context.Context) (bool, string, error) {
			at, err := firstDHCP(s.lab.Hub.PcapPath(), s.vmMAC, t0)
			return err == nil && !at.IsZero(), "no DHCP from " + s.vmMAC.String() + " since the reset", err
		})
	t.Logf("node-a reset (vDC off) to the VM's DHCP request: %v", d.Round(100*time.Millisecond))
}

// vmAfterQvDCReboot checks, once the QvDC is back, that the VM is the same and
// running.
func (s *suite) vmAfterQvDCReboot(t *testing.T) {
	t.Helper()
	if s.vmUUID == "" {
		return
	}
	vm := s.waitVM(t, "the VM running at the vDC after node-a's and the QvDC's reboot", quantix.ObservedRunning)
	if vm.UUID != s.vmUUID {
		t.Errorf("after the reboots the VM is %s, want %s", vm.UUID, s.vmUUID)
	}
	// The console after the reboots is an observation, not a check: once (in CI,
	// after scenario 1d had stopped early) the vDC held an empty console for the
	// autostarted VM; under investigation (issue 17's closing note).
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		b, err := s.lab.VDC.VMConsole(ctx, vmName)
		if err == nil && bytes.Contains(b, []byte(vmMarker)) {
			t.Logf("the guest's marker is in its console at the vDC after the reboots")
			return
		}
		time.Sleep(time.Second)
	}
	t.Logf("NOTE: no guest marker in the console at the vDC 90 s after the reboots")
}

// 7b. Delete: the VM goes from node-a (its inventory shows the domain lost: the
// node no longer has it) and from the vDC's managed VMs. (Its disk's removal is
// checked against a real libvirtd in agent/vms.)
func (s *suite) vmDelete(t *testing.T) {
	s.needNodeA(t)
	if s.vmUUID == "" {
		t.Skip("scenario 1d made no VM")
	}
	s.qxCtl(t, "vms", "delete", vmName, "--yes")
	d := poll(t, "the VM gone from node-a's inventory", vmTimeout, func(ctx context.Context) (bool, string, error) {
		vms, err := s.lab.VDC.VMs(ctx)
		if err != nil {
			return false, "", err
		}
		// The inventory keeps what a node no longer has, marked lost with the reason.
		for _, v := range vms {
			if v.UUID == s.vmUUID && !v.Lost {
				return false, fmt.Sprintf("node reports %+v", v), nil
			}
			if v.UUID == s.vmUUID {
				t.Logf("node-a's inventory: %s lost (%s)", v.Name, v.LostReason)
			}
		}
		return true, "", nil
	})
	t.Logf("delete to gone from node-a: %v", d.Round(100*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.lab.VDC.VM(ctx, vmName); err == nil {
		t.Errorf("vm %s still at the vDC after delete", vmName)
	}
	s.vmUUID = ""
}
