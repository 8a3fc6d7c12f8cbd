package console

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/quantix/quantix/services/network"
)

// NetForm is what the management network screen edits. It is turned into a
// network.toml and checked by network.Settings.Validate, the very code the network
// service runs, so the console cannot accept what the service would refuse.
type NetForm struct {
	Mode    string // network.ModeDHCP or network.ModeStatic
	Address string // a.b.c.d/nn
	Gateway string
	DNS     string // comma or space separated
	// Base is the settings the form started from (interface, [dhcp]); kept as they
	// are.
	Base network.Settings
}

// Field keys, as network.Settings errors name them.
const (
	FieldMode    = "mode"
	FieldAddress = "static.address"
	FieldGateway = "static.gateway"
	FieldDNS     = "dns"
	FieldOther   = ""
)

// FormFromSettings fills a form from saved settings.
func FormFromSettings(s network.Settings) NetForm {
	f := NetForm{Mode: s.Mode, Base: s, DNS: strings.Join(s.DNS, ", ")}
	if f.Mode == "" {
		f.Mode = network.ModeDHCP
	}
	if s.Static != nil {
		f.Address, f.Gateway = s.Static.Address, s.Static.Gateway
	}
	return f
}

// LoadForm starts the form from the persistent network.toml when there is one,
// else from what the service reports (its interface, mode and address). The error
// says why the file was not used (it is shown, the form still opens).
func LoadForm(path string, st *network.Status) (NetForm, error) {
	s, err := network.Load(path)
	if err == nil {
		return FormFromSettings(s), nil
	}
	base := network.DefaultSettings()
	base.DHCP = network.DHCPSettings{}
	f := NetForm{Mode: network.ModeDHCP, Base: base}
	if st != nil {
		if st.Interface != "" {
			f.Base.Interface = st.Interface
		}
		if st.Port != "" {
			f.Base.Interface = st.Port // the NIC under the bridge, not the bridge
		}
		if st.Mode != "" {
			f.Mode = st.Mode
		}
		if st.Mode == network.ModeStatic || st.Source == network.SourceDHCP || st.Source == network.SourceFallback {
			f.Address, f.Gateway = st.Address, st.Gateway
		}
		if st.Mode == network.ModeStatic {
			f.DNS = strings.Join(st.DNS, ", ")
		}
	}
	if errors.Is(err, os.ErrNotExist) {
		return f, nil
	}
	return f, err
}

// Settings builds the network.Settings of the form (not validated).
func (f NetForm) Settings() network.Settings {
	s := f.Base
	s.Source = "console"
	s.Mode = strings.TrimSpace(f.Mode)
	s.DNS = nil // no DNS servers: nil, not empty (network.toml leaves dns out)
	if dns := strings.FieldsFunc(f.DNS, func(r rune) bool { return r == ',' || r == ' ' || r == ';' }); len(dns) > 0 {
		s.DNS = dns
	}
	s.Static = nil
	addr, gw := strings.TrimSpace(f.Address), strings.TrimSpace(f.Gateway)
	if addr != "" || gw != "" || s.Mode == network.ModeStatic {
		s.Static = &network.StaticSettings{Address: addr, Gateway: gw}
	}
	// A fallback of "static" needs [static]; in DHCP mode without an address, let the
	// service choose (link-local) rather than fail on an old fallback.
	if s.Static == nil && s.DHCP.Fallback == network.FallbackStatic {
		s.DHCP.Fallback = ""
	}
	return s
}

// Validate checks the form with the network service's own rules. The map holds one
// message per field key (FieldOther for the rest); nil means valid. The service
// stops at its first error, so each field it names is cleared and the rest checked
// again: the operator sees every bad field at once. The gateway is only judged
// against a valid address.
func (f NetForm) Validate() map[string]string {
	var errs map[string]string
	for range 5 {
		err := f.Settings().Validate()
		if err == nil {
			break
		}
		k := fieldOf(err)
		if _, seen := errs[k]; seen {
			break
		}
		if errs == nil {
			errs = map[string]string{}
		}
		errs[k] = fieldMessage(err)
		switch k {
		case FieldDNS:
			f.DNS = ""
		case FieldGateway:
			f.Gateway = ""
		default:
			return errs
		}
	}
	return errs
}

// fieldOf finds the key a network.Settings error names:
// "invalid network settings: console: static.gateway: ...".
func fieldOf(err error) string {
	msg := err.Error()
	for _, k := range []string{FieldAddress, FieldGateway, FieldDNS, FieldMode} {
		if strings.Contains(msg, ": "+k+": ") {
			return k
		}
	}
	if strings.Contains(msg, ": static: ") {
		return FieldAddress
	}
	return FieldOther
}

// fieldMessage is the error without the "invalid network settings: console:"
// preamble, which the screen makes obvious.
func fieldMessage(err error) string {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, network.ErrInvalidSettings.Error()+": ")
	msg = strings.TrimPrefix(msg, "console: ")
	return msg
}

// TOML renders the form as a network.toml. It is parsed back with network.Parse
// before it is sent, so what is sent is exactly what the service will read.
func (f NetForm) TOML() ([]byte, error) {
	s := f.Settings()
	if err := s.Validate(); err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString("# Management network, written by the Quantix console.\n")
	iface := s.Interface
	if iface == "" {
		iface = network.InterfaceAuto
	}
	fmt.Fprintf(&b, "interface = %s\n", strconv.Quote(iface))
	if s.Bridge != nil {
		fmt.Fprintf(&b, "bridge = %s\n", strconv.Quote(strings.TrimSpace(*s.Bridge)))
	}
	fmt.Fprintf(&b, "mode = %s\n", strconv.Quote(s.Mode))
	if len(s.DNS) > 0 {
		q := make([]string, len(s.DNS))
		for i, d := range s.DNS {
			q[i] = strconv.Quote(strings.TrimSpace(d))
		}
		fmt.Fprintf(&b, "dns = [%s]\n", strings.Join(q, ", "))
	}
	if s.Static != nil {
		b.WriteString("\n[static]\n")
		fmt.Fprintf(&b, "address = %s\n", strconv.Quote(strings.TrimSpace(s.Static.Address)))
		if g := strings.TrimSpace(s.Static.Gateway); g != "" {
			fmt.Fprintf(&b, "gateway = %s\n", strconv.Quote(g))
		}
	}
	if s.DHCP.Timeout != "" || s.DHCP.Fallback != "" {
		b.WriteString("\n[dhcp]\n")
		if s.DHCP.Timeout != "" {
			fmt.Fprintf(&b, "timeout = %s\n", strconv.Quote(s.DHCP.Timeout))
		}
		if s.DHCP.Fallback != "" {
			fmt.Fprintf(&b, "fallback = %s\n", strconv.Quote(s.DHCP.Fallback))
		}
	}
	data := []byte(b.String())
	if _, err := network.Parse("console", data); err != nil {
		return nil, fmt.Errorf("console network.toml does not parse back: %w", err)
	}
	return data, nil
}
