package netlab

import (
	"context"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
)

// TestOnlyTestsImport keeps the lab out of programs: no package's non-test files
// import it.
func TestOnlyTestsImport(t *testing.T) {
	const self = "github.com/quantix/quantix/tests/netlab"
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "github.com/quantix/quantix/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		for _, imp := range f[1:] {
			if imp == self {
				t.Errorf("package %s imports %s outside its tests", f[0], self)
			}
		}
	}
}

// TestPairDHCP runs the pair with its DHCP server: the far end answers in its
// namespace, the client end is untouched, and Set and Forget take effect.
func TestPairDHCP(t *testing.T) {
	p := NewPair(t, "qxlab")
	if got := p.Client.Addrs("eth0"); len(got) != 0 {
		t.Errorf("client eth0 holds %q, want no address", got)
	}
	if got := p.Far.Addrs("gw0"); len(got) != 1 || got[0] != Gateway+"/24" {
		t.Errorf("far gw0 holds %q, want %s/24", got, Gateway)
	}
	if mac := p.Client.Link("eth0").Attrs().HardwareAddr.String(); mac != ClientMAC {
		t.Errorf("client eth0 MAC = %s, want %s", mac, ClientMAC)
	}
	d := p.StartDHCP(t, DHCPSettings{Lease: time.Hour, DNS: net.ParseIP("10.77.0.53")})
	if err := p.Client.Handle.LinkSetUp(p.Client.Link("eth0")); err != nil {
		t.Fatal(err)
	}
	lease := func() (*nclient4.Lease, error) {
		var l *nclient4.Lease
		err := p.Client.Do(func() error {
			c, err := nclient4.New("eth0", nclient4.WithTimeout(time.Second), nclient4.WithRetry(3))
			if err != nil {
				return err
			}
			defer c.Close()
			l, err = c.Request(context.Background())
			return err
		})
		return l, err
	}
	l, err := lease()
	if err != nil {
		t.Fatalf("DHCP from the pair's server: %v", err)
	}
	if ip, r, dns := l.ACK.YourIPAddr.String(), l.ACK.Router(), l.ACK.DNS(); ip != "10.77.0.100" || len(r) != 1 || r[0].String() != Gateway ||
		len(dns) != 1 || dns[0].String() != "10.77.0.53" || l.ACK.IPAddressLeaseTime(0) != time.Hour {
		t.Errorf("lease %s router %v dns %v time %v, want 10.77.0.100 via %s, dns 10.77.0.53, 1h", ip, r, dns, l.ACK.IPAddressLeaseTime(0), Gateway)
	}
	// The client retransmits its DISCOVER when an OFFER takes over its 1 s timeout
	// (a loaded machine): one or more DISCOVERs, then exactly one REQUEST.
	got := d.Requests()
	discovers := 0
	for discovers < len(got) && strings.HasPrefix(got[discovers], "DISCOVER from ") {
		discovers++
	}
	if discovers == 0 || len(got) != discovers+1 || !strings.HasPrefix(got[discovers], "REQUEST from ") {
		t.Errorf("requests = %q, want DISCOVERs (retransmitted at most) and then one REQUEST", got)
	}

	d.Forget(150)
	d.Set(func(s *DHCPSettings) { s.NAKAll = true })
	if _, err := lease(); err == nil {
		t.Errorf("a lease while the server refuses every REQUEST")
	}
	d.Set(func(s *DHCPSettings) { s.NAKAll = false })
	if l, err := lease(); err != nil || l.ACK.YourIPAddr.String() != "10.77.0.150" {
		t.Errorf("lease after Forget(150) = %v, %v; want 10.77.0.150", l, err)
	}
}
