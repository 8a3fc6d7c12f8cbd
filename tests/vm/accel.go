package vm

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Accelerators.
const (
	AccelTCG = "tcg"
	AccelKVM = "kvm"
)

var (
	accelOnce   sync.Once
	accelVal    string
	accelReason string
	accelErr    error
)

// Accel returns the accelerator VMs use: QUANTIX_VM_ACCEL when set ("tcg" or "kvm"),
// else "kvm" only when a probe proves it works (kvm_intel or kvm_amd loaded AND a
// tiny boot of the test kernel under -accel kvm reaches its first marker within
// 20 s), else "tcg". /dev/kvm existing is not enough (docs/platform.md: a paravirtual KVM
// that hangs guests). The probe runs once per process.
func Accel(t testing.TB) string {
	t.Helper()
	accelOnce.Do(func() { accelVal, accelReason, accelErr = probeAccel(t) })
	if accelErr != nil {
		t.Fatalf("choose accelerator: %v", accelErr)
	}
	return accelVal
}

// AccelReason says why Accel chose what it chose.
func AccelReason() string { return accelReason }

// probeAccel never fails t itself: it runs inside a sync.Once.
func probeAccel(t testing.TB) (accel, reason string, err error) {
	switch v := os.Getenv("QUANTIX_VM_ACCEL"); v {
	case AccelTCG, AccelKVM:
		return v, "QUANTIX_VM_ACCEL=" + v, nil
	case "":
	default:
		return "", "", fmt.Errorf("QUANTIX_VM_ACCEL=%q: want %q or %q", v, AccelTCG, AccelKVM)
	}
	mod := ""
	for _, m := range []string{"kvm_intel", "kvm_amd"} {
		if _, err := os.Stat("/sys/module/" + m); err == nil {
			mod = m
		}
	}
	if mod == "" {
		return AccelTCG, "neither kvm_intel nor kvm_amd is loaded", nil
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return AccelTCG, fmt.Sprintf("%s loaded but /dev/kvm: %v", mod, err), nil
	}
	f.Close()
	// A real boot decides: a broken KVM hangs or dies here.
	k, err := LoadKernel()
	if err != nil {
		return "", "", fmt.Errorf("kvm probe: %w", err)
	}
	initramfsOnce.Do(func() { initramfsPath, initramfsErr = buildTestInitramfs(k) })
	if initramfsErr != nil {
		return "", "", fmt.Errorf("kvm probe: %w", initramfsErr)
	}
	m, err := start(t, Config{
		Name:   "kvm-probe",
		Kernel: k.Vmlinuz,
		Initrd: initramfsPath,
		Accel:  AccelKVM,
		probe:  true,
	})
	if err != nil {
		return AccelTCG, fmt.Sprintf("kvm probe boot: %v", err), nil
	}
	defer m.stop()
	if _, err := m.Await(MatchMarker("boot"), 20*time.Second); err != nil {
		return AccelTCG, fmt.Sprintf("kvm probe boot under %s: %v", mod, err), nil
	}
	return AccelKVM, fmt.Sprintf("kvm probe boot under %s reached its first marker", mod), nil
}

var (
	scaleOnce sync.Once
	scaleVal  float64
	scaleErr  error
)

// TimeoutScale multiplies every timeout the lab waits for: QUANTIX_VM_TIMEOUT_SCALE
// (a positive number, default 1). Tests write their timeouts for TCG on the 2-core
// reference machine (docs/platform.md); a slower runner sets the scale, e.g. 2.
func TimeoutScale() (float64, error) {
	scaleOnce.Do(func() {
		scaleVal = 1
		if s := os.Getenv("QUANTIX_VM_TIMEOUT_SCALE"); s != "" {
			v, err := strconv.ParseFloat(s, 64)
			if err != nil || v <= 0 {
				scaleErr = fmt.Errorf("QUANTIX_VM_TIMEOUT_SCALE=%q: want a positive number", s)
				return
			}
			scaleVal = v
		}
	})
	return scaleVal, scaleErr
}

// ScaleTimeout applies TimeoutScale to d (an invalid scale counts as 1; Start reports it).
func ScaleTimeout(d time.Duration) time.Duration {
	s, err := TimeoutScale()
	if err != nil {
		return d
	}
	return time.Duration(float64(d) * s)
}
