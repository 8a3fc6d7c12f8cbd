package hypervisor

import (
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/quantix/quantix"
)

// KVM ioctls (linux/kvm.h).
const (
	kvmGetAPIVersion       = 0xAE00
	kvmCreateVM            = 0xAE01
	kvmGetVCPUMmapSize     = 0xAE04
	kvmCreateVCPU          = 0xAE41
	kvmSetUserMemoryRegion = 0x4020AE46
	kvmRun                 = 0xAE80
	kvmExitHLT             = 5
)

type kvmMemoryRegion struct {
	Slot, Flags                    uint32
	GuestPhysAddr, MemorySize, Mem uint64
}

// ProbeKVM decides whether KVM really runs guests here, never from /dev/kvm's
// existence alone: under TCG an L1 whose CPU model advertises AMD svm loads kvm_amd
// and gets a /dev/kvm that cannot run anything (docs/platform.md). It creates a VM
// whose reset vector holds one HLT instruction and runs it: KVM works when the vCPU
// exits with KVM_EXIT_HLT within timeout. The error says why not.
func ProbeKVM(dev string, timeout time.Duration) error {
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	done := make(chan error, 1)
	go func() {
		// A broken KVM may hang in KVM_RUN: the descriptors then stay with this
		// goroutine, and the answer is "no".
		defer f.Close()
		done <- runHLT(int(f.Fd()))
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		return fmt.Errorf("%s: a one-instruction guest did not halt within %v", dev, timeout)
	}
}

func runHLT(kvm int) error {
	if v, err := unix.IoctlRetInt(kvm, kvmGetAPIVersion); err != nil || v != 12 {
		return fmt.Errorf("KVM API version %d (%v), want 12", v, err)
	}
	vm, err := unix.IoctlRetInt(kvm, kvmCreateVM)
	if err != nil {
		return fmt.Errorf("create a KVM VM: %w", err)
	}
	defer unix.Close(vm)
	const page = 0x1000
	mem, err := unix.Mmap(-1, 0, page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	defer unix.Munmap(mem)
	// The vCPU starts at 0xfffffff0 (CS base 0xffff0000, IP 0xfff0): map the last
	// page below 4 GiB and put HLT there.
	mem[0xff0] = 0xf4
	region := kvmMemoryRegion{GuestPhysAddr: 0xfffff000, MemorySize: page, Mem: uint64(uintptr(unsafe.Pointer(&mem[0])))}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(vm), kvmSetUserMemoryRegion, uintptr(unsafe.Pointer(&region))); e != 0 {
		return fmt.Errorf("KVM memory region: %w", e)
	}
	cpu, err := unix.IoctlRetInt(vm, kvmCreateVCPU)
	if err != nil {
		return fmt.Errorf("create a KVM vCPU: %w", err)
	}
	defer unix.Close(cpu)
	size, err := unix.IoctlRetInt(kvm, kvmGetVCPUMmapSize)
	if err != nil {
		return err
	}
	run, err := unix.Mmap(cpu, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	defer unix.Munmap(run)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(cpu), kvmRun, 0); e != 0 {
		return fmt.Errorf("run a KVM vCPU: %w", e)
	}
	// struct kvm_run: two u8 and six bytes of padding, then __u32 exit_reason.
	if reason := *(*uint32)(unsafe.Pointer(&run[8])); reason != kvmExitHLT {
		return fmt.Errorf("a one-instruction KVM guest exited with reason %d, want HLT (%d)", reason, kvmExitHLT)
	}
	return nil
}

// Accelerator decides what guests run with: quantix.AccelKVM when kvm_intel or
// kvm_amd is loaded (sysModule is /sys/module) and ProbeKVM runs a guest on dev,
// else quantix.AccelTCG with the reason.
func Accelerator(sysModule, dev string) (accel, reason string) {
	loaded := ""
	for _, m := range []string{"kvm_intel", "kvm_amd"} {
		if _, err := os.Stat(sysModule + "/" + m); err == nil {
			loaded = m
		}
	}
	if loaded == "" {
		return quantix.AccelTCG, "neither kvm_intel nor kvm_amd is loaded (no hardware virtualization)"
	}
	if err := ProbeKVM(dev, 5*time.Second); err != nil {
		return quantix.AccelTCG, fmt.Sprintf("%s is loaded but KVM does not run a guest: %v", loaded, err)
	}
	return quantix.AccelKVM, ""
}
