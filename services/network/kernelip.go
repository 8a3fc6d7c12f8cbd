package network

import (
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/quantix/quantix"
)

// kernelIPSource names settings that came from the kernel command line.
const kernelIPSource = "kernel command line ip="

// ParseKernelIP parses the value of the kernel's ip= parameter (the nfsroot syntax,
// Documentation/admin-guide/nfs/nfsroot.rst):
//
//	ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0-ip>:<dns1-ip>:<ntp0-ip>
//
// or one word: ip=dhcp (also on, any, bootp, both, rarp) or ip=off (also none).
// Fields may be empty; trailing fields may be left out. ok is false when ip= asks for
// no configuration (off/none, or autoconf off without an address), so lower
// precedence applies. The server, hostname and NTP fields mean nothing here and are
// ignored. As in the kernel, a given client-ip means a static address whatever
// autoconf says; without one, autoconf other than off/none means DHCP.
func ParseKernelIP(value string) (s Settings, ok bool, err error) {
	bad := func(format string, args ...any) (Settings, bool, error) {
		return Settings{}, false, fmt.Errorf("%w: %s: %s", ErrInvalidSettings, kernelIPSource+value, fmt.Sprintf(format, args...))
	}
	s = Settings{Interface: InterfaceAuto, Source: kernelIPSource + value}
	if !strings.Contains(value, ":") && net.ParseIP(value) == nil {
		switch strings.ToLower(value) {
		case "off", "none", "":
			return Settings{}, false, nil
		case "on", "any", "dhcp", "bootp", "rarp", "both":
			s.Mode = ModeDHCP
			return s, true, nil
		default:
			return bad("%q is neither an autoconf word (dhcp, off) nor <client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>", value)
		}
	}
	f := strings.Split(value, ":")
	if len(f) > 10 {
		return bad("%d fields, at most 10", len(f))
	}
	for len(f) < 10 {
		f = append(f, "")
	}
	client, gw, mask, device, autoconf := f[0], f[2], f[3], f[5], strings.ToLower(f[6])
	if device != "" {
		if err := validIfaceName(device); err != nil {
			return bad("device %q %v", device, err)
		}
		s.Interface = device
	}
	for _, d := range []string{f[7], f[8]} {
		if d == "" {
			continue
		}
		if ip := net.ParseIP(d).To4(); ip == nil || ip.IsUnspecified() {
			return bad("dns %q is not an IPv4 address", d)
		}
		s.DNS = append(s.DNS, d)
	}
	if client != "" {
		ip := net.ParseIP(client).To4()
		if ip == nil {
			return bad("client-ip %q is not an IPv4 address", client)
		}
		ones := 0
		switch {
		case mask == "":
			ones = classfulPrefix(ip)
		case !strings.Contains(mask, "."):
			if _, err := fmt.Sscanf(mask, "%d", &ones); err != nil || ones < 1 || ones > 32 || fmt.Sprint(ones) != mask {
				return bad("netmask %q is neither dotted (255.255.255.0) nor a prefix length", mask)
			}
		default:
			m := net.ParseIP(mask).To4()
			if m == nil {
				return bad("netmask %q is not a dotted netmask like 255.255.255.0", mask)
			}
			var bits int
			ones, bits = net.IPMask(m).Size()
			if bits == 0 {
				return bad("netmask %q is not contiguous", mask)
			}
		}
		st := &StaticSettings{Address: fmt.Sprintf("%s/%d", ip, ones)}
		if gw != "" {
			if g := net.ParseIP(gw).To4(); g == nil {
				return bad("gw-ip %q is not an IPv4 address", gw)
			}
			st.Gateway = gw
		}
		s.Static = st
	} else if gw != "" || mask != "" {
		return bad("gw-ip or netmask given without client-ip")
	}
	switch autoconf {
	case "", "off", "none", "on", "any", "dhcp", "bootp", "rarp", "both":
	default:
		return bad("autoconf %q is not one of off, none, on, any, dhcp, bootp, rarp, both", f[6])
	}
	switch {
	case s.Static != nil:
		// Like the kernel (ipconfig.c ip_auto_config), a given client address is
		// used as is: autoconfiguration only runs when the address is missing.
		s.Mode = ModeStatic
	case autoconf == "off" || autoconf == "none":
		return Settings{}, false, nil
	default:
		s.Mode = ModeDHCP
	}
	if err := s.Validate(); err != nil {
		return Settings{}, false, err
	}
	return s, true, nil
}

// classfulPrefix is the kernel's default netmask when ip= gives none.
func classfulPrefix(ip net.IP) int {
	switch {
	case ip[0] < 128:
		return 8
	case ip[0] < 192:
		return 16
	default:
		return 24
	}
}

// Origin says which layer the settings in effect came from.
type Origin string

// Layers of configuration, lowest precedence first (docs/design.md §3).
const (
	OriginDefault = Origin("image default")
	OriginCmdline = Origin("kernel command line")
	OriginFile    = Origin("config file")
	OriginApply   = Origin("runtime apply")
)

// Resolve picks the settings in effect at start. Precedence, lowest first: the image
// default < the kernel command line's ip= < the persistent network.toml. The layer
// that is present wins as a whole (keys are not merged across layers), so what runs
// is always one complete, validated configuration. cmdline is the text of
// /proc/cmdline; file holds the bytes of the persistent file (nil when it does not
// exist) and fileName its path.
func Resolve(cmdline string, fileName string, file []byte) (Settings, Origin, error) {
	if file != nil {
		s, err := Parse(fileName, file)
		if err != nil {
			return Settings{}, OriginFile, err
		}
		return s, OriginFile, nil
	}
	if v, present := quantix.ParseCmdline(cmdline).Get(quantix.ParamIP); present {
		s, ok, err := ParseKernelIP(v)
		if err != nil {
			return Settings{}, OriginCmdline, err
		}
		if ok {
			return s, OriginCmdline, nil
		}
	}
	return DefaultSettings(), OriginDefault, nil
}

// readOptional returns a file's bytes, or nil when it does not exist.
func readOptional(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if b == nil {
		b = []byte{}
	}
	return b, nil
}
