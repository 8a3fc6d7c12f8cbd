package installer

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent"
	"github.com/quantix/quantix/services/console"
	"github.com/quantix/quantix/services/network"
	"github.com/quantix/quantix/vdc"
)

// ErrAnswer is wrapped by every error that means the answer file is wrong.
var ErrAnswer = errors.New("invalid answer file")

// After is what the installer does once the disk is written and verified.
const (
	AfterPoweroff = "poweroff"
	AfterReboot   = "reboot"
)

// Answer is the answer file (TOML) of an unattended install, found on a filesystem
// labelled QUANTIX-INSTALL. Interactive mode fills the same structure.
//
//	image = "quantix-os"         # optional guard: must match the running image
//	hostname = "node1"
//	wipe = false                 # true: the target may hold partitions or data
//	after = "poweroff"           # or "reboot" (default "poweroff")
//	console_password = "..."     # optional; stored as an argon2id hash only
//	console_password_hash = ""   # or the hash itself: "$argon2id$v=19$m=...,t=...,p=...$salt$hash"
//
//	[target]                     # exactly one key
//	path = "/dev/sda"            # or serial = "...", wwn = "...", only_empty = true
//
//	[network]                    # network.toml (docs/design.md §7), optional
//	mode = "dhcp"
//
//	[agent]                      # Quantix OS: agent.toml
//	control_plane = "https://vdc.example:8080"
//	join_token = "..."
//
//	[vdc]                        # QvDC
//	admin_token = "..."          # optional; stored hashed in secrets.toml
//	join_tokens = ["..."]        # optional static join tokens
type Answer struct {
	Image               string            `toml:"image"`
	Hostname            string            `toml:"hostname"`
	Wipe                bool              `toml:"wipe"`
	After               string            `toml:"after"`
	ConsolePassword     string            `toml:"console_password"`
	ConsolePasswordHash string            `toml:"console_password_hash"`
	Target              Target            `toml:"target"`
	Network             *network.Settings `toml:"network"`
	Agent               *agent.FileConfig `toml:"agent"`
	VDC                 *VDCAnswer        `toml:"vdc"`
	// TrustedKeys are the site's release keys (quantix.PublicKey lines, as
	// qx-image keygen writes them): the installed system accepts upgrade bundles
	// signed by them as well as by the keys its image trusts. They go to
	// quantix.SiteTrustedKeys on QUANTIX-CFG.
	TrustedKeys []string `toml:"trusted_keys"`

	// Source names the answer file in messages (not part of the file).
	Source string `toml:"-"`
}

// Target names the disk to install on: exactly one field is set.
type Target struct {
	// Path is a device node (/dev/sda) or a symlink to one.
	Path string `toml:"path"`
	// Serial is the disk's serial number as the disk reports it.
	Serial string `toml:"serial"`
	// WWN is the World Wide Name (e.g. "naa.5000c500a1b2c3d4" or "0x5000c500a1b2c3d4").
	WWN string `toml:"wwn"`
	// OnlyEmpty picks the only disk that is empty (all zeros at both ends), fixed,
	// and not the boot medium; it is an error when there are none or several.
	OnlyEmpty bool `toml:"only_empty"`
}

// String describes the target as the answer file names it.
func (t Target) String() string {
	switch {
	case t.Path != "":
		return "path " + t.Path
	case t.Serial != "":
		return "serial " + t.Serial
	case t.WWN != "":
		return "wwn " + t.WWN
	case t.OnlyEmpty:
		return "the only empty disk"
	}
	return "no disk"
}

// explicit reports whether the target names one disk (path, serial or WWN).
func (t Target) explicit() bool { return t.Path != "" || t.Serial != "" || t.WWN != "" }

// VDCAnswer is the [vdc] table for QvDC.
type VDCAnswer struct {
	// AdminToken is the vDC admin bearer token; only its hash is written.
	AdminToken string `toml:"admin_token"`
	// JoinTokens are static join tokens written to vdc.toml.
	JoinTokens []string `toml:"join_tokens"`
	// Listen and HeartbeatInterval override the vDC defaults when set.
	Listen            string `toml:"listen"`
	HeartbeatInterval string `toml:"heartbeat_interval"`
}

// LoadAnswer reads, strictly decodes and validates an answer file for image.
func LoadAnswer(path, image string) (*Answer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrAnswer, err)
	}
	return ParseAnswer(path, data, image)
}

// ParseAnswer strictly decodes and validates an answer file held in memory; name
// is used in messages, image is the running image (quantix.ImageQuantixOS or
// quantix.ImageQvDC).
func ParseAnswer(name string, data []byte, image string) (*Answer, error) {
	var a Answer
	if err := quantix.DecodeTOML(name, data, &a); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrAnswer, err)
	}
	a.Source = name
	if err := a.Validate(image); err != nil {
		return nil, err
	}
	return &a, nil
}

// Validate checks every key and returns the first problem, naming the file and key.
// It also fills in defaults (after) and normalizes the hostname.
func (a *Answer) Validate(image string) error {
	bad := func(key, format string, args ...any) error {
		src := a.Source
		if src == "" {
			src = "answer file"
		}
		return fmt.Errorf("%w: %s: %s: %s", ErrAnswer, src, key, fmt.Sprintf(format, args...))
	}
	if image != quantix.ImageQuantixOS && image != quantix.ImageQvDC {
		return fmt.Errorf("installer: unknown image %q (want %s or %s)", image, quantix.ImageQuantixOS, quantix.ImageQvDC)
	}
	if a.Image != "" && a.Image != image {
		return bad("image", "the answer file is for %q but this is the %s installer", a.Image, image)
	}
	if a.Hostname == "" {
		return bad("hostname", "missing: every install needs a hostname")
	}
	h, err := quantix.NormalizeHostname(a.Hostname)
	if err != nil {
		return bad("hostname", "%v", err)
	}
	a.Hostname = h
	switch a.After {
	case "":
		a.After = AfterPoweroff
	case AfterPoweroff, AfterReboot:
	default:
		return bad("after", "%q: want %q or %q", a.After, AfterPoweroff, AfterReboot)
	}
	n := 0
	for _, set := range []bool{a.Target.Path != "", a.Target.Serial != "", a.Target.WWN != "", a.Target.OnlyEmpty} {
		if set {
			n++
		}
	}
	switch {
	case n == 0:
		return bad("target", "missing: set one of target.path, target.serial, target.wwn or target.only_empty = true")
	case n > 1:
		return bad("target", "set exactly one of path, serial, wwn and only_empty (found %d)", n)
	}
	if p := a.Target.Path; p != "" && !strings.HasPrefix(p, "/dev/") {
		return bad("target.path", "%q is not a device under /dev", p)
	}
	if a.ConsolePassword != "" && a.ConsolePasswordHash != "" {
		return bad("console_password", "set console_password or console_password_hash, not both")
	}
	// Both go to the console's own password file (console.DefaultPasswordFile), so
	// the console's own rules apply.
	if p := a.ConsolePassword; p != "" {
		if err := console.CheckNewPassword(p); err != nil {
			return bad("console_password", "%s", strings.TrimPrefix(err.Error(), "password: "))
		}
	}
	if hsh := a.ConsolePasswordHash; hsh != "" {
		if err := console.ValidHash(hsh); err != nil {
			return bad("console_password_hash", "%s (want an argon2id PHC string \"$argon2id$v=19$m=...,t=...,p=...$salt$hash\")", strings.TrimPrefix(err.Error(), "password hash: "))
		}
	}
	for i, k := range a.TrustedKeys {
		if _, err := quantix.ParsePublicKey(k); err != nil {
			return bad(fmt.Sprintf("trusted_keys[%d]", i), "%v", err)
		}
	}
	if a.Network != nil {
		s := *a.Network
		s.Source = a.srcOr() + " [network]"
		if err := s.Validate(); err != nil {
			return fmt.Errorf("%w: %w", ErrAnswer, err)
		}
	}
	switch image {
	case quantix.ImageQuantixOS:
		if a.VDC != nil {
			return bad("vdc", "only for the %s image; this is %s (use [agent])", quantix.ImageQvDC, image)
		}
		if a.Agent == nil {
			return bad("agent", "missing: %s needs [agent] with control_plane and join_token", image)
		}
		if a.Agent.ControlPlane == "" {
			return bad("agent.control_plane", "missing: the vDC URL, e.g. \"https://10.0.0.2:8080\"")
		}
		if a.Agent.JoinToken == "" {
			return bad("agent.join_token", "missing: a join token from the vDC, qx1.<CA pin>.<secret> (qx-ctl tokens create)")
		}
		if err := a.Agent.Validate(); err != nil {
			return bad("agent", "%v", err)
		}
	case quantix.ImageQvDC:
		if a.Agent != nil {
			return bad("agent", "only for the %s image; this is %s (use [vdc])", quantix.ImageQuantixOS, image)
		}
		if a.VDC != nil {
			if _, err := a.VDC.config(); err != nil {
				return bad("vdc", "%v", err)
			}
		}
	}
	return nil
}

func (a *Answer) srcOr() string {
	if a.Source == "" {
		return "answer file"
	}
	return a.Source
}

// config returns the vdc.toml the answer asks for (never holding the admin token).
func (v *VDCAnswer) config() (vdc.Config, error) {
	c := vdc.DefaultConfig()
	if v.Listen != "" {
		c.Listen = v.Listen
	}
	if v.HeartbeatInterval != "" {
		if err := c.HeartbeatInterval.UnmarshalText([]byte(v.HeartbeatInterval)); err != nil {
			return c, fmt.Errorf("heartbeat_interval %q: %v", v.HeartbeatInterval, err)
		}
	}
	c.JoinTokens = v.JoinTokens
	c.AdminToken = v.AdminToken
	if err := c.Validate(); err != nil {
		// vdc's messages name the vdc.toml key, which is the same key here.
		return c, errors.New(strings.TrimPrefix(err.Error(), quantix.ErrConfig.Error()+": "))
	}
	c.AdminToken = ""
	return c, nil
}
