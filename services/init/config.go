// Package initd (folder services/init) is the Quantix init companion: u-root's init
// runs qx-init as its uinit, and this package does the rest of the boot (DESIGN §8):
// load the image's kernel modules, mount QUANTIX-CFG and QUANTIX-DATA by label, set
// the hostname, supervise the image's services (dependency order, readiness, restart
// backoff, logs to the console and /var/log/quantix) plus a console on a serial port
// when one is configured, print the console markers, answer the control socket
// (service states, restart one, poweroff, reboot), and stop everything cleanly on
// poweroff or reboot. PID 1 never exits: on a fatal error
// init logs, syncs and reboots after a delay, so nothing ever drops to a shell.
//
// The package is named initd because a Go package cannot be imported as "init".
package initd

import (
	"bytes"
	"fmt"
	"os"

	"github.com/BurntSushi/toml"
	"github.com/quantix/quantix"
	"github.com/quantix/quantix/images/spec"
)

// ConfigPath is where the image builder puts the image configuration in the initramfs.
const ConfigPath = "/etc/quantix/image.toml"

// Config is what the image builder tells init about the image (ConfigPath).
type Config struct {
	Image         string         `toml:"image"`
	Version       string         `toml:"version"`
	VolumeLabel   string         `toml:"volume_label"`
	Hostname      string         `toml:"hostname"`
	KernelRelease string         `toml:"kernel_release"`
	Modules       []string       `toml:"modules"`
	LateModules   []string       `toml:"late_modules"`
	Services      []spec.Service `toml:"service"`
}

// LoadConfig reads and checks the image configuration.
func LoadConfig(path string) (*Config, error) {
	var c Config
	if err := quantix.DecodeTOMLFile(path, &c); err != nil {
		return nil, fmt.Errorf("load image config: %w", err)
	}
	if c.Image == "" || c.Version == "" {
		return nil, fmt.Errorf("load image config %s: image and version are required", path)
	}
	if err := quantix.ValidateHostname(c.Hostname); err != nil {
		return nil, fmt.Errorf("load image config %s: hostname: %w", path, err)
	}
	if _, err := spec.ServiceOrder(c.Services); err != nil {
		return nil, fmt.Errorf("load image config %s: %w", path, err)
	}
	return &c, nil
}

// Encode returns the TOML form of c, as the image builder writes it.
func (c *Config) Encode() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("# Written by qx-image; read by qx-init at boot.\n")
	if err := toml.NewEncoder(&b).Encode(c); err != nil {
		return nil, fmt.Errorf("encode image config: %w", err)
	}
	return b.Bytes(), nil
}

// WriteConfig is a helper for tests and tools: it writes c to path.
func WriteConfig(path string, c *Config) error {
	b, err := c.Encode()
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
