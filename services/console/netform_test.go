package console

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix/quantix/services/network"
)

func TestNetFormValidate(t *testing.T) {
	eth0 := network.Settings{Interface: "eth0"}
	tests := []struct {
		name      string
		form      NetForm
		wantField string
		wantMsg   string
	}{
		{"dhcp alone", NetForm{Mode: "dhcp", Base: eth0}, "", ""},
		{"dhcp with fallback", NetForm{Mode: "dhcp", Address: "10.0.0.5/24", Gateway: "10.0.0.1", Base: eth0}, "", ""},
		{"static", NetForm{Mode: "static", Address: "10.0.0.5/24", Gateway: "10.0.0.1", DNS: "10.0.0.1, 1.1.1.1", Base: eth0}, "", ""},
		{"static no gateway", NetForm{Mode: "static", Address: "10.0.0.5/24", Base: eth0}, "", ""},
		{"static without address", NetForm{Mode: "static", Base: eth0}, FieldAddress, "static.address: missing"},
		{"no prefix", NetForm{Mode: "static", Address: "10.0.0.5", Gateway: "10.0.0.1", Base: eth0}, FieldAddress, "not an address with prefix length"},
		{"ipv6", NetForm{Mode: "static", Address: "fd00::5/64", Base: eth0}, FieldAddress, "is not IPv4"},
		{"network address", NetForm{Mode: "static", Address: "10.0.0.0/24", Base: eth0}, FieldAddress, "network address"},
		{"broadcast", NetForm{Mode: "static", Address: "10.0.0.255/24", Base: eth0}, FieldAddress, "broadcast address"},
		{"gateway outside", NetForm{Mode: "static", Address: "10.0.0.5/24", Gateway: "10.0.1.1", Base: eth0}, FieldGateway, "static.gateway: 10.0.1.1 is not inside 10.0.0.0/24"},
		{"gateway is self", NetForm{Mode: "static", Address: "10.0.0.5/24", Gateway: "10.0.0.5", Base: eth0}, FieldGateway, "the address itself"},
		{"gateway garbage", NetForm{Mode: "static", Address: "10.0.0.5/24", Gateway: "router", Base: eth0}, FieldGateway, "not an IPv4 address"},
		{"dns garbage", NetForm{Mode: "static", Address: "10.0.0.5/24", DNS: "10.0.0.1, dns.example", Base: eth0}, FieldDNS, `entry 2: "dns.example" is not an IP address`},
		{"dns and gateway both", NetForm{Mode: "static", Address: "10.0.0.5/24", Gateway: "10.9.0.1", DNS: "nope", Base: eth0}, FieldGateway, "not inside 10.0.0.0/24"},
		{"bad interface", NetForm{Mode: "dhcp", Base: network.Settings{Interface: "a-very-long-interface-name"}}, FieldOther, "interface"},
	}
	for _, tt := range tests {
		errs := tt.form.Validate()
		if tt.wantField == "" && tt.wantMsg == "" {
			if errs != nil {
				t.Errorf("%s: Validate = %v, want valid", tt.name, errs)
			}
			continue
		}
		msg, ok := errs[tt.wantField]
		if !ok || !strings.Contains(msg, tt.wantMsg) {
			t.Errorf("%s: Validate = %v, want %q on field %q", tt.name, errs, tt.wantMsg, tt.wantField)
		}
		// The same rules as the service: the file the form would write is refused
		// by network.Parse too.
		if _, err := tt.form.TOML(); err == nil {
			t.Errorf("%s: TOML() accepted what Validate refused", tt.name)
		}
	}
}

func TestNetFormTOMLRoundTrip(t *testing.T) {
	base, err := network.Parse("network.toml", []byte("interface = \"52:54:00:12:34:56\"\nmode = \"dhcp\"\n[dhcp]\ntimeout = \"20s\"\nfallback = \"link-local\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	f := FormFromSettings(base)
	f.Mode, f.Address, f.Gateway, f.DNS = "static", " 10.0.0.5/24 ", "10.0.0.1", "10.0.0.53 1.1.1.1"
	data, err := f.TOML()
	if err != nil {
		t.Fatalf("TOML: %v", err)
	}
	s, err := network.Parse("console", data)
	if err != nil {
		t.Fatalf("Parse(TOML()) = %v\n%s", err, data)
	}
	if s.Interface != "52:54:00:12:34:56" || s.Mode != "static" || s.Static.Address != "10.0.0.5/24" || s.Static.Gateway != "10.0.0.1" ||
		strings.Join(s.DNS, ",") != "10.0.0.53,1.1.1.1" || s.DHCP.Timeout != "20s" || s.DHCP.Fallback != "link-local" {
		t.Fatalf("round trip lost something:\n%s\n%+v", data, s)
	}
	// Back to DHCP without an address: no [static], and an old "static" fallback
	// must not make the file invalid.
	base.DHCP.Fallback = "static"
	f = NetForm{Mode: "dhcp", Base: base}
	data, err = f.TOML()
	if err != nil {
		t.Fatalf("TOML(dhcp) = %v", err)
	}
	if strings.Contains(string(data), "[static]") || strings.Contains(string(data), `fallback = "static"`) {
		t.Fatalf("dhcp form wrote:\n%s", data)
	}
}

func TestLoadForm(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "network.toml")
	st := &network.Status{Interface: "eth0", Mode: "dhcp", Source: "dhcp", Address: "10.0.0.100/24", Gateway: "10.0.0.1", DNS: []string{"10.0.0.53"}}
	f, err := LoadForm(path, st)
	if err != nil || f.Base.Interface != "eth0" || f.Mode != "dhcp" || f.Address != "10.0.0.100/24" || f.Gateway != "10.0.0.1" || f.DNS != "" {
		t.Fatalf("LoadForm without a file = %+v, %v", f, err)
	}
	os.WriteFile(path, []byte("interface = \"eth1\"\nmode = \"static\"\ndns = [\"1.1.1.1\"]\n[static]\naddress = \"10.1.0.5/16\"\ngateway = \"10.1.0.1\"\n"), 0o644)
	f, err = LoadForm(path, st)
	if err != nil || f.Base.Interface != "eth1" || f.Mode != "static" || f.Address != "10.1.0.5/16" || f.DNS != "1.1.1.1" {
		t.Fatalf("LoadForm from the file = %+v, %v", f, err)
	}
	os.WriteFile(path, []byte("mode = \"static\"\nbogus = 1\n"), 0o644)
	f, err = LoadForm(path, st)
	if err == nil || !strings.Contains(err.Error(), `unknown key "bogus"`) || f.Base.Interface != "eth0" {
		t.Fatalf("LoadForm of a bad file = %+v, %v; want the error and the form from the status", f, err)
	}
	// On the management bridge the form names the NIC, not the bridge.
	os.Remove(path)
	bridged := *st
	bridged.Interface, bridged.Port = "br0", "eth0"
	if f, err = LoadForm(path, &bridged); err != nil || f.Base.Interface != "eth0" {
		t.Fatalf("LoadForm on br0 over eth0 = %+v, %v; want interface eth0", f, err)
	}
}

// TestNetFormKeepsBridge: a bridge key in the file survives an edit, "" included
// (absent means the image default, a different layout).
func TestNetFormKeepsBridge(t *testing.T) {
	for _, bridge := range []string{"", "br1"} {
		base, err := network.Parse("network.toml", []byte("interface = \"eth0\"\nbridge = \""+bridge+"\"\n"))
		if err != nil {
			t.Fatal(err)
		}
		f := FormFromSettings(base)
		f.Mode, f.Address, f.Gateway = "static", "10.0.0.5/24", "10.0.0.1"
		data, err := f.TOML()
		if err != nil {
			t.Fatal(err)
		}
		s, err := network.Parse("console", data)
		if err != nil || s.Bridge == nil || *s.Bridge != bridge {
			t.Errorf("bridge %q after a console edit: %v\n%s", bridge, err, data)
		}
	}
}
