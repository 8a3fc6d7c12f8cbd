package quantix

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/BurntSushi/toml"
)

// ImageConfigPath is where the image builder puts the image configuration in the
// initramfs; init, the console and the installer read it.
const ImageConfigPath = "/etc/quantix/image.toml"

// ImageConfig is what the image builder tells init about the image (ImageConfigPath).
type ImageConfig struct {
	Image         string    `toml:"image"`
	Version       string    `toml:"version"`
	VolumeLabel   string    `toml:"volume_label"`
	Hostname      string    `toml:"hostname"`
	KernelRelease string    `toml:"kernel_release"`
	Modules       []string  `toml:"modules"`
	LateModules   []string  `toml:"late_modules"`
	Services      []Service `toml:"service"`
	// HaltHooks run, in order, when the machine powers off or reboots, before init
	// stops the services (Quantix-OS: the guests are shut down while libvirtd and
	// the agent still run, docs/design.md §14).
	HaltHooks []HaltHook `toml:"halt_hook"`
	// TrialDeadlineSeconds is how long an A/B trial boot has to pass its health
	// gates (docs/design.md §16); 0 means init's default (5 minutes).
	TrialDeadlineSeconds int `toml:"trial_deadline_seconds,omitempty"`
}

// HaltHook is a command init runs on a power-off or reboot before it stops the
// services. QUANTIX_HALT=poweroff|reboot is in its environment. Its output goes
// to init's log; a failure or a timeout is logged and the halt goes on.
type HaltHook struct {
	Command string   `toml:"command"`
	Args    []string `toml:"args"`
	// TimeoutSeconds bounds the hook (default DefaultHaltHookTimeout); its process
	// group is killed then.
	TimeoutSeconds int `toml:"timeout_seconds"`
}

// DefaultHaltHookTimeout and MaxHaltHookTimeout bound a halt hook, in seconds.
const (
	DefaultHaltHookTimeout = 60
	MaxHaltHookTimeout     = 600
)

// GuestsStoppingFile exists while `qx-node shutdown-guests` (a halt hook of
// Quantix-OS) shuts the guests down: the agent's reconciler then starts no guest.
// It lives in RunDir, a tmpfs, so the next boot starts without it.
const GuestsStoppingFile = RunDir + "/guests-stopping"

// How init decides that a service is ready (Service.Ready).
const (
	ReadyOnMarker = "marker" // the service printed ReadyMarker on stdout (default)
	ReadyOnStart  = "start"  // the process started
)

// Service is one supervised service of an image: the image definition lists it,
// the image config carries it to init, and init's supervisor runs it
// (docs/design.md §8).
type Service struct {
	Name      string   `toml:"name"`
	Command   string   `toml:"command"`
	Args      []string `toml:"args"`
	DependsOn []string `toml:"depends_on"`
	// Ready is ReadyOnMarker (default, also "") or ReadyOnStart.
	Ready string `toml:"ready"`
	// AfterBoot services start once the boot is complete (every other service
	// ready, the remaining kernel modules loaded), or after a bounded wait when it
	// is not; boot-complete does not wait for them (Quantix-OS: libvirtd).
	AfterBoot bool `toml:"after_boot"`
	// HealthGate says whether the service's readiness decides an A/B trial boot
	// (docs/design.md §16): "" no, GateReady yes, GateIfVDC only when a vDC is
	// configured (the node agent: without one it has nothing to register with).
	HealthGate string `toml:"health_gate"`
	// Modules are kernel modules (of the image's kernel.modules) init loads before
	// it starts the service, in its own process: the service's first use of them
	// (the network service creating br0) then does not wait for the kernel to run
	// modprobe, another process start.
	Modules []string `toml:"modules,omitempty"`
	// BootPriority PriorityLow starts the service at the lowest CPU priority
	// (nice 19) until boot-complete, then gives it the normal one: a service
	// boot-complete does not wait for (the console) then takes no CPU from the
	// ones it does while the boot is on. "" is the normal priority throughout.
	BootPriority string `toml:"boot_priority,omitempty"`
}

// PriorityLow is the Service.BootPriority of services that yield during the boot.
const PriorityLow = "low"

// Service.HealthGate values.
const (
	GateReady = "ready"
	GateIfVDC = "if-vdc"
)

// LoadImageConfig reads and checks the image configuration.
func LoadImageConfig(path string) (*ImageConfig, error) {
	var c ImageConfig
	if err := DecodeTOMLFile(path, &c); err != nil {
		return nil, fmt.Errorf("load image config: %w", err)
	}
	if c.Image == "" || c.Version == "" {
		return nil, fmt.Errorf("load image config %s: image and version are required", path)
	}
	if err := ValidateHostname(c.Hostname); err != nil {
		return nil, fmt.Errorf("load image config %s: hostname: %w", path, err)
	}
	if _, err := ServiceOrder(c.Services); err != nil {
		return nil, fmt.Errorf("load image config %s: %w", path, err)
	}
	for _, s := range c.Services {
		if s.HealthGate != "" && s.HealthGate != GateReady && s.HealthGate != GateIfVDC {
			return nil, fmt.Errorf("load image config %s: service %s: health_gate %q, want %q or %q", path, s.Name, s.HealthGate, GateReady, GateIfVDC)
		}
		if s.BootPriority != "" && s.BootPriority != PriorityLow {
			return nil, fmt.Errorf("load image config %s: service %s: boot_priority %q, want %q or none", path, s.Name, s.BootPriority, PriorityLow)
		}
	}
	return &c, nil
}

// Encode returns the TOML form of c, as the image builder writes it.
func (c *ImageConfig) Encode() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("# Written by qx-image; read by qx-init at boot.\n")
	if err := toml.NewEncoder(&b).Encode(c); err != nil {
		return nil, fmt.Errorf("encode image config: %w", err)
	}
	return b.Bytes(), nil
}

// ServiceOrder returns the service names in start order: every service after the
// services it depends on, ties kept in list order. A cycle is an error naming it.
func ServiceOrder(svcs []Service) ([]string, error) {
	idx := map[string]int{}
	for i, s := range svcs {
		idx[s.Name] = i
	}
	const (
		unvisited = iota
		visiting
		done
	)
	state := make([]int, len(svcs))
	var order []string
	var stack []string
	var visit func(i int) error
	visit = func(i int) error {
		switch state[i] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("dependency cycle %s -> %s", strings.Join(stack, " -> "), svcs[i].Name)
		}
		state[i] = visiting
		stack = append(stack, svcs[i].Name)
		for _, d := range svcs[i].DependsOn {
			j, ok := idx[d]
			if !ok {
				return fmt.Errorf("%s depends on unknown service %q", svcs[i].Name, d)
			}
			if err := visit(j); err != nil {
				return err
			}
		}
		stack = stack[:len(stack)-1]
		state[i] = done
		order = append(order, svcs[i].Name)
		return nil
	}
	for i := range svcs {
		if err := visit(i); err != nil {
			return nil, err
		}
	}
	return order, nil
}
