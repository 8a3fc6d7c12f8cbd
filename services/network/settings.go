package network

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/quantix/quantix"
)

// Modes and fallbacks of network.toml (docs/design.md §7).
const (
	ModeDHCP   = "dhcp"
	ModeStatic = "static"

	FallbackStatic    = "static"
	FallbackLinkLocal = "link-local"
	FallbackNone      = "none"

	// InterfaceAuto lets the service choose the interface (physical ethernet first,
	// then wifi).
	InterfaceAuto = "auto"

	// DefaultDHCPTimeout is the first-lease timeout before falling back.
	DefaultDHCPTimeout = 10 * time.Second
	// maxDHCPTimeout bounds dhcp.timeout: beyond it the fallback is pointless.
	maxDHCPTimeout = 10 * time.Minute
)

// Sources of an address, as shown in the ready marker and the status.
const (
	SourceStatic    = "static"     // mode = "static"
	SourceDHCP      = "dhcp"       // a DHCP lease
	SourceFallback  = "fallback"   // the [static] address after the first-lease timeout
	SourceLinkLocal = "link-local" // RFC 3927 169.254/16 after the first-lease timeout
	SourceNone      = "none"       // no address (waiting for a lease, or lease expired)
)

// ErrInvalidSettings is wrapped by every error Validate returns.
var ErrInvalidSettings = errors.New("invalid network settings")

// Settings is network.toml (docs/design.md §7). The installer embeds it in its answer file and
// the console edits it, so both use Parse/Load and Validate from here.
type Settings struct {
	// Interface is an interface name, a MAC address, or "auto" (the default).
	Interface string `toml:"interface"`
	// Mode is "dhcp" (the default) or "static".
	Mode string `toml:"mode"`
	// Bridge is the Linux bridge the management address lives on, with the interface
	// as its only configured port (docs/design.md §13); "" keeps the address on the
	// interface. Absent (nil) means the image's default (Config.Bridge: "br0" on
	// Quantix-OS, "" on QvDC).
	Bridge *string `toml:"bridge"`
	// DNS lists name servers; empty means the ones DHCP provides.
	DNS []string `toml:"dns"`
	// Static is the address for mode "static" and the DHCP fallback.
	Static *StaticSettings `toml:"static"`
	// DHCP tunes the DHCP client.
	DHCP DHCPSettings `toml:"dhcp"`

	// Source names where these settings came from (a file path, "kernel command line
	// ip=", "image default"); errors name it. Not part of the file.
	Source string `toml:"-"`
	// raw is the file as read, so line numbers can be named in errors.
	raw []byte
}

// StaticSettings is the [static] table.
type StaticSettings struct {
	// Address is the IPv4 address with prefix length, e.g. "10.0.0.5/24".
	Address string `toml:"address"`
	// Gateway is the IPv4 default gateway inside Address's subnet; empty means no
	// default route.
	Gateway string `toml:"gateway"`
}

// DHCPSettings is the [dhcp] table.
type DHCPSettings struct {
	// Timeout is the first-lease timeout as a Go duration ("10s"); empty means 10s.
	Timeout string `toml:"timeout"`
	// Fallback is "static", "link-local" or "none"; empty means "static" when [static]
	// is set, else "link-local".
	Fallback string `toml:"fallback"`
}

// DefaultSettings is the image default: DHCP on the automatic interface, falling
// back to IPv4 link-local.
func DefaultSettings() Settings {
	return Settings{
		Interface: InterfaceAuto,
		Mode:      ModeDHCP,
		DHCP:      DHCPSettings{Timeout: DefaultDHCPTimeout.String(), Fallback: FallbackLinkLocal},
		Source:    "image default",
	}
}

// Parse strictly decodes network.toml from data; name is used in messages. The
// result is validated.
func Parse(name string, data []byte) (Settings, error) {
	var s Settings
	if err := quantix.DecodeTOML(name, data, &s); err != nil {
		return Settings{}, fmt.Errorf("%w: %w", ErrInvalidSettings, err)
	}
	s.Source = name
	s.raw = append([]byte(nil), data...)
	if err := s.Validate(); err != nil {
		return Settings{}, err
	}
	return s, nil
}

// Load reads, strictly decodes and validates the network.toml at path.
func Load(path string) (Settings, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Settings{}, err // *PathError names the file
	}
	return Parse(path, data)
}

// Validate checks every field without touching the system; the error names the
// source, the line when known, the key and the problem. Whether the interface exists
// is checked when the settings are applied, still before anything is changed, and
// so is an absent bridge key against the image's default.
func (s Settings) Validate() error {
	_, err := s.compile("")
	return err
}

// plan is validated settings in the types the service works with.
type plan struct {
	iface    string // name, MAC (lower case) or "auto"
	bridge   string // the bridge holding the address; "" for none
	mode     string
	dns      []net.IP
	static   *staticPlan
	timeout  time.Duration
	fallback string
	source   string
	raw      []byte // the file bytes, persisted on confirm; nil when not from a file
}

type staticPlan struct {
	addr *net.IPNet // IP is the host address, Mask the prefix
	gw   net.IP     // nil: no default route
}

func (p *staticPlan) String() string {
	if p == nil {
		return "<none>"
	}
	if p.gw == nil {
		return p.addr.String()
	}
	return p.addr.String() + " via " + p.gw.String()
}

func (s Settings) fieldErr(key, format string, args ...any) error {
	return s.fieldErrNear(key, key, format, args...)
}

// fieldErrNear is fieldErr for a missing key: the line named is near's (the key
// itself, else its table, else the file).
func (s Settings) fieldErrNear(key, near, format string, args ...any) error {
	loc := s.Source
	if loc == "" {
		loc = "network settings"
	}
	line := settingsKeyLine(s.raw, near)
	if i := strings.LastIndex(near, "."); line == 0 && i > 0 {
		line = settingsKeyLine(s.raw, near[:i])
	}
	if line > 0 {
		loc = fmt.Sprintf("%s:%d", loc, line)
	}
	return fmt.Errorf("%w: %s: %s: %s", ErrInvalidSettings, loc, key, fmt.Sprintf(format, args...))
}

// compile validates s into a plan; imageBridge is the bridge an absent bridge key
// means.
func (s Settings) compile(imageBridge string) (plan, error) {
	p := plan{source: s.Source, raw: s.raw}
	switch iface := strings.TrimSpace(s.Interface); {
	case iface == "" || iface == InterfaceAuto:
		p.iface = InterfaceAuto
	case strings.Count(iface, ":") == 5:
		mac, err := net.ParseMAC(iface)
		if err != nil || len(mac) != 6 {
			return plan{}, s.fieldErr("interface", "%q is not a MAC address like 52:54:00:12:34:56", s.Interface)
		}
		p.iface = mac.String()
	default:
		if err := validIfaceName(iface); err != nil {
			return plan{}, s.fieldErr("interface", "%q %v (use a name like eth0, a MAC address or \"auto\")", s.Interface, err)
		}
		p.iface = iface
	}

	if err := s.compileBridge(&p, imageBridge); err != nil {
		return plan{}, err
	}

	switch s.Mode {
	case "", ModeDHCP:
		p.mode = ModeDHCP
	case ModeStatic:
		p.mode = ModeStatic
	default:
		return plan{}, s.fieldErr("mode", "%q is not a mode (use \"dhcp\" or \"static\")", s.Mode)
	}

	for i, d := range s.DNS {
		ip := net.ParseIP(strings.TrimSpace(d))
		if ip == nil {
			return plan{}, s.fieldErr("dns", "entry %d: %q is not an IP address", i+1, d)
		}
		p.dns = append(p.dns, ip)
	}

	if s.Static != nil {
		sp, err := s.compileStatic()
		if err != nil {
			return plan{}, err
		}
		p.static = sp
	}
	if p.mode == ModeStatic && p.static == nil {
		return plan{}, s.fieldErrNear("static", "mode", "mode = \"static\" needs a [static] table with address and gateway")
	}

	p.timeout = DefaultDHCPTimeout
	if s.DHCP.Timeout != "" {
		d, err := time.ParseDuration(s.DHCP.Timeout)
		if err != nil {
			return plan{}, s.fieldErr("dhcp.timeout", "%q is not a duration (use e.g. \"10s\")", s.DHCP.Timeout)
		}
		if d <= 0 || d > maxDHCPTimeout {
			return plan{}, s.fieldErr("dhcp.timeout", "%s is out of range (more than 0s, at most %s)", d, maxDHCPTimeout)
		}
		p.timeout = d
	}

	switch s.DHCP.Fallback {
	case "":
		p.fallback = FallbackLinkLocal
		if p.static != nil {
			p.fallback = FallbackStatic
		}
	case FallbackStatic:
		if p.static == nil {
			return plan{}, s.fieldErr("dhcp.fallback", "\"static\" needs a [static] table with address and gateway")
		}
		p.fallback = FallbackStatic
	case FallbackLinkLocal, FallbackNone:
		p.fallback = s.DHCP.Fallback
	default:
		return plan{}, s.fieldErr("dhcp.fallback", "%q is not a fallback (use \"static\", \"link-local\" or \"none\")", s.DHCP.Fallback)
	}
	return p, nil
}

func (s Settings) compileBridge(p *plan, imageBridge string) error {
	from := " (the image default)"
	p.bridge = strings.TrimSpace(imageBridge)
	if s.Bridge != nil {
		p.bridge, from = strings.TrimSpace(*s.Bridge), ""
	}
	if p.bridge == "" {
		return nil
	}
	if err := validIfaceName(p.bridge); err != nil {
		return s.fieldErr("bridge", "%q%s %v (use a name like br0, or \"\" to keep the address on the interface)", p.bridge, from, err)
	}
	if p.bridge == p.iface {
		return s.fieldErr("bridge", "%q%s is the interface itself: the bridge needs a name of its own (e.g. br0), or set bridge = \"\" to keep the address on %s", p.bridge, from, p.iface)
	}
	return nil
}

func (s Settings) compileStatic() (*staticPlan, error) {
	st := s.Static
	if strings.TrimSpace(st.Address) == "" {
		return nil, s.fieldErr("static.address", "missing (e.g. \"10.0.0.5/24\")")
	}
	ip, subnet, err := net.ParseCIDR(strings.TrimSpace(st.Address))
	if err != nil {
		return nil, s.fieldErr("static.address", "%q is not an address with prefix length like 10.0.0.5/24", st.Address)
	}
	ip4 := ip.To4()
	if ip4 == nil {
		return nil, s.fieldErr("static.address", "%q is not IPv4", st.Address)
	}
	ones, _ := subnet.Mask.Size()
	if err := usableHost(ip4, subnet); err != nil {
		return nil, s.fieldErr("static.address", "%s %v", st.Address, err)
	}
	sp := &staticPlan{addr: &net.IPNet{IP: ip4, Mask: subnet.Mask}}
	if g := strings.TrimSpace(st.Gateway); g != "" {
		gw := net.ParseIP(g).To4()
		switch {
		case gw == nil:
			return nil, s.fieldErr("static.gateway", "%q is not an IPv4 address", st.Gateway)
		case !subnet.Contains(gw):
			return nil, s.fieldErr("static.gateway", "%s is not inside %s", gw, subnet)
		case gw.Equal(ip4):
			return nil, s.fieldErr("static.gateway", "%s is the address itself", gw)
		case ones <= 30 && (gw.Equal(subnet.IP) || gw.Equal(broadcast(subnet))):
			return nil, s.fieldErr("static.gateway", "%s is the network or broadcast address of %s", gw, subnet)
		}
		sp.gw = gw
	}
	return sp, nil
}

// usableHost rejects addresses no host may hold.
func usableHost(ip net.IP, subnet *net.IPNet) error {
	ones, _ := subnet.Mask.Size()
	switch {
	case ones == 0:
		return errors.New("has prefix length 0")
	case ip.IsUnspecified(), ip.IsMulticast(), ip.Equal(net.IPv4bcast), ip.IsLoopback():
		return errors.New("is not a host address")
	case ones <= 30 && ip.Equal(subnet.IP):
		return fmt.Errorf("is the network address of %s", subnet)
	case ones <= 30 && ip.Equal(broadcast(subnet)):
		return fmt.Errorf("is the broadcast address of %s", subnet)
	}
	return nil
}

func broadcast(n *net.IPNet) net.IP {
	ip := n.IP.To4()
	out := make(net.IP, 4)
	for i := range out {
		out[i] = ip[i] | ^n.Mask[len(n.Mask)-4+i]
	}
	return out
}

// validIfaceName applies the kernel's rules for interface names (dev_valid_name).
func validIfaceName(name string) error {
	switch {
	case len(name) > 15:
		return errors.New("is longer than 15 characters")
	case name == "." || name == "..":
		return errors.New("is not an interface name")
	case strings.ContainsAny(name, "/: \t\n"):
		return errors.New("holds a character interface names cannot hold")
	}
	return nil
}

// settingsKeyLine finds the line defining key ("static.gateway") in data, for
// messages; 0 if unknown. quantix.DecodeTOML does the same for unknown keys but does
// not export it.
func settingsKeyLine(data []byte, key string) int {
	if len(data) == 0 {
		return 0
	}
	table, last := "", key
	if i := strings.LastIndex(key, "."); i >= 0 {
		table, last = key[:i], key[i+1:]
	}
	cur := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(strings.SplitN(sc.Text(), "#", 2)[0])
		if strings.HasPrefix(line, "[") {
			cur = strings.TrimSpace(strings.Trim(line, "[] "))
			if cur == key {
				return n
			}
			continue
		}
		k, _, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		k = strings.Trim(strings.TrimSpace(k), `"'`)
		if (cur == table && k == last) || (cur == "" && k == key) {
			return n
		}
	}
	return 0
}
