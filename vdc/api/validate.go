package api

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"

	"github.com/quantix/quantix"
)

// ParseManagementIP accepts ip, ip:port, [ipv6]:port and [ipv6], strips the port
// and the IPv6 zone, and refuses addresses no node can be reached at.
func ParseManagementIP(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, badRequest("management_ip is empty")
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		ap, perr := netip.ParseAddrPort(s)
		switch {
		case perr == nil:
			a = ap.Addr()
		case strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]"):
			a, err = netip.ParseAddr(s[1 : len(s)-1])
			if err != nil || !a.Is6() {
				return netip.Addr{}, badRequest("management_ip %q is not an IP address (want ip, ip:port or [ipv6]:port)", s)
			}
		default:
			return netip.Addr{}, badRequest("management_ip %q is not an IP address (want ip, ip:port or [ipv6]:port)", s)
		}
	}
	a = a.Unmap().WithZone("")
	if a.IsUnspecified() || a.IsMulticast() {
		return netip.Addr{}, badRequest("management_ip %q is not a unicast address", s)
	}
	return a, nil
}

func checkText(field, v string, max int, required bool) error {
	switch {
	case required && v == "":
		return badRequest("%s is empty", field)
	case len(v) > max:
		return badRequest("%s is %d bytes long, at most %d allowed", field, len(v), max)
	case strings.ContainsRune(v, 0):
		return badRequest("%s contains a NUL character", field)
	}
	return nil
}

func checkCount(field string, v int64, max int64) error {
	if v < 0 || v > max {
		return badRequest("%s is %d, want 0..%d", field, v, max)
	}
	return nil
}

const maxSmallInt = 1 << 24 // cpus, sockets, vcpus: far above any real machine, far below int32

func checkNodeSecret(s string) error {
	if len(s) != 64 {
		return badRequest("node_secret is %d characters, want 64 hex characters (32 random bytes)", len(s))
	}
	if _, err := hex.DecodeString(s); err != nil {
		return badRequest("node_secret is not hex: %v", err)
	}
	return nil
}

func checkHypervisor(h *quantix.Hypervisor) error {
	if h == nil {
		return nil
	}
	switch h.State {
	case quantix.HypervisorAvailable, quantix.HypervisorUnavailable, quantix.HypervisorUnknown:
	default:
		return badRequest("hypervisor.state %q is not one of available, unavailable, unknown", h.State)
	}
	switch h.Accelerator {
	case "", quantix.AccelKVM, quantix.AccelTCG:
	default:
		return badRequest("hypervisor.accelerator %q is not one of kvm, tcg", h.Accelerator)
	}
	for _, f := range []struct{ name, v string }{{"hypervisor.reason", h.Reason}, {"hypervisor.uri", h.URI}, {"hypervisor.version", h.Version},
		{"hypervisor.qemu_version", h.QEMUVersion}, {"hypervisor.accelerator_reason", h.AcceleratorReason}} {
		if err := checkText(f.name, f.v, 1024, false); err != nil {
			return err
		}
	}
	return nil
}

func checkRegister(req *quantix.RegisterRequest) error {
	if err := checkText("machine_id", req.MachineID, 128, true); err != nil {
		return err
	}
	if err := checkNodeSecret(req.NodeSecret); err != nil {
		return err
	}
	if err := checkText("agent_version", req.AgentVersion, 128, false); err != nil {
		return err
	}
	if c := req.CPU; c != nil {
		if err := checkText("cpu.model", c.Model, 256, false); err != nil {
			return err
		}
		for _, f := range []struct {
			name string
			v    int
		}{{"cpu.sockets", c.Sockets}, {"cpu.cores", c.Cores}, {"cpu.threads", c.Threads}} {
			if err := checkCount(f.name, int64(f.v), maxSmallInt); err != nil {
				return err
			}
		}
	}
	if req.MemoryBytes < 0 {
		return badRequest("memory_bytes is %d, want 0 or more", req.MemoryBytes)
	}
	if len(req.Labels) > 64 {
		return badRequest("labels has %d entries, at most 64 allowed", len(req.Labels))
	}
	for k, v := range req.Labels {
		if err := checkText("labels key", k, 253, true); err != nil {
			return err
		}
		if err := checkText(fmt.Sprintf("labels[%q]", k), v, 1024, false); err != nil {
			return err
		}
	}
	return checkHypervisor(req.Hypervisor)
}

var powerStates = map[string]bool{
	quantix.PowerRunning: true, quantix.PowerBlocked: true, quantix.PowerPaused: true,
	quantix.PowerShutdown: true, quantix.PowerShutoff: true, quantix.PowerCrashed: true,
	quantix.PowerPMSuspended: true, quantix.PowerUnknown: true,
}

func checkVM(field string, v *quantix.VM) error {
	if !IsUUID(v.UUID) {
		return badRequest("%s.uuid %q is not a UUID", field, v.UUID)
	}
	if err := checkText(field+".name", v.Name, 1024, true); err != nil {
		return err
	}
	if !powerStates[v.PowerState] {
		return badRequest("%s.power_state %q is not a libvirt power state (running, blocked, paused, shutdown, shutoff, crashed, pmsuspended, unknown)", field, v.PowerState)
	}
	if err := checkCount(field+".vcpus", int64(v.VCPUs), maxSmallInt); err != nil {
		return err
	}
	if v.MemoryBytes < 0 {
		return badRequest("%s.memory_bytes is %d, want 0 or more", field, v.MemoryBytes)
	}
	return checkText(field+".error", v.Error, 4096, false)
}

func checkPool(field string, p *quantix.StoragePool) error {
	if err := checkText(field+".name", p.Name, 1024, true); err != nil {
		return err
	}
	for _, f := range []struct{ name, v string }{{".uuid", p.UUID}, {".type", p.Type}, {".path", p.Path}, {".state", p.State}} {
		if err := checkText(field+f.name, f.v, 4096, false); err != nil {
			return err
		}
	}
	if p.CapacityBytes < 0 || p.AvailableBytes < 0 || p.AllocationBytes < 0 {
		return badRequest("%s: capacity_bytes, allocation_bytes and available_bytes must be 0 or more", field)
	}
	return nil
}

func checkState(st *quantix.NodeState) error {
	seen := map[string]int{}
	for i := range st.VMs {
		f := fmt.Sprintf("vms[%d]", i)
		if err := checkVM(f, &st.VMs[i]); err != nil {
			return err
		}
		if j, dup := seen[strings.ToLower(st.VMs[i].UUID)]; dup {
			return badRequest("%s.uuid %s repeats vms[%d]", f, st.VMs[i].UUID, j)
		}
		seen[strings.ToLower(st.VMs[i].UUID)] = i
	}
	names := map[string]int{}
	for i := range st.StoragePools {
		f := fmt.Sprintf("storage_pools[%d]", i)
		if err := checkPool(f, &st.StoragePools[i]); err != nil {
			return err
		}
		if j, dup := names[st.StoragePools[i].Name]; dup {
			return badRequest("%s.name %q repeats storage_pools[%d]", f, st.StoragePools[i].Name, j)
		}
		names[st.StoragePools[i].Name] = i
	}
	if st.StateHash != "" {
		if want := quantix.StateHash(st.VMs, st.StoragePools); st.StateHash != want {
			return badRequest("state_hash %s does not match the VMs and storage pools sent (want %s, quantix.StateHash)", st.StateHash, want)
		}
	}
	if st.AppliedGeneration < 0 {
		return badRequest("applied_generation is %d, want 0 or more", st.AppliedGeneration)
	}
	return checkHypervisor(st.Hypervisor)
}

func checkEvents(evs *quantix.NodeEvents) error {
	if len(evs.Events) == 0 {
		return badRequest("events is empty")
	}
	for i := range evs.Events {
		e := &evs.Events[i]
		f := fmt.Sprintf("events[%d]", i)
		if e.Action != quantix.EventActionUpsert && e.Action != quantix.EventActionRemoved {
			return badRequest("%s.action %q is not upsert or removed", f, e.Action)
		}
		switch e.Kind {
		case quantix.EventKindVM:
			if e.VM == nil || e.StoragePool != nil {
				return badRequest("%s: kind vm needs vm and no storage_pool", f)
			}
			if e.Action == quantix.EventActionRemoved {
				if !IsUUID(e.VM.UUID) {
					return badRequest("%s.vm.uuid %q is not a UUID", f, e.VM.UUID)
				}
			} else if err := checkVM(f+".vm", e.VM); err != nil {
				return err
			}
		case quantix.EventKindStoragePool:
			if e.StoragePool == nil || e.VM != nil {
				return badRequest("%s: kind storage_pool needs storage_pool and no vm", f)
			}
			if e.Action == quantix.EventActionRemoved {
				if err := checkText(f+".storage_pool.name", e.StoragePool.Name, 1024, true); err != nil {
					return err
				}
			} else if err := checkPool(f+".storage_pool", e.StoragePool); err != nil {
				return err
			}
		default:
			return badRequest("%s.kind %q is not vm or storage_pool", f, e.Kind)
		}
	}
	return nil
}

// checkNodeOS bounds what a heartbeat says of the node's operating system.
func checkNodeOS(o *quantix.NodeOS) error {
	if o == nil {
		return nil
	}
	if o.Version == "" {
		return badRequest("os.version is empty")
	}
	texts := map[string]string{"os.image": o.Image, "os.version": o.Version}
	if sl := o.Slots; sl != nil {
		if len(sl.Slots) > 2 || len(sl.Order) > 2 {
			return badRequest("os.slots: at most 2 slots")
		}
		texts["os.slots.state"], texts["os.slots.reason"] = sl.State, sl.Reason
		for i, s := range sl.Slots {
			texts[fmt.Sprintf("os.slots.slots[%d].version", i)] = s.Version
		}
	}
	if u := o.Upgrade; u != nil {
		texts["os.upgrade.phase"], texts["os.upgrade.error"] = u.Phase, u.Error
	}
	for f, v := range texts {
		if err := checkText(f, v, 1024, false); err != nil {
			return err
		}
	}
	return nil
}
