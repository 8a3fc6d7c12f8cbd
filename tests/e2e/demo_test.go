package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/tests/vm"
)

// DemoEnv turns TestDemo from a skip into the demo lab (`make demo`).
const DemoEnv = "QUANTIX_DEMO"

// demoNodeAddr is the demo node's static address on the lab segment.
var demoNodeAddr = netip.MustParsePrefix("10.77.0.21/24")

// TestDemo is `make demo`, not a test: it boots the lab (QvDC and one Quantix-OS
// node, both real ISOs, in QEMU on the lab segment), waits until the node is ready
// at the vDC with its hypervisor available, and prints the web UI's address on
// 127.0.0.1 and the admin token, so that a newcomer can sign in and create a VM in
// the browser. It runs until interrupted (Ctrl-C) and then powers both machines off.
//
//	QUANTIX_DEMO=1 go test ./tests/e2e -run '^TestDemo$' -v -timeout 0
func TestDemo(t *testing.T) {
	if os.Getenv(DemoEnv) == "" {
		t.Skipf("the demo lab runs with %s=1 (make demo)", DemoEnv)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	lab := NewLab(t)
	lab.StartNode(t, vm.NodeConfig{Hostname: hostA, Network: vm.StaticNetwork(demoNodeAddr)})
	s := &suite{lab: lab}
	n, _ := s.waitNode(t, "the demo node ready with its hypervisor", hostA, NodeBootTimeout, func(n quantix.Node) bool {
		return n.Phase == quantix.PhaseReady && n.Hypervisor.State == quantix.HypervisorAvailable
	})
	ui := "https://" + lab.WS.Proxy(t, fmt.Sprintf("%s:%d", QvDCAddr.Addr(), UIPort)) + "/ui/"
	api := "http://" + lab.WS.Proxy(t, fmt.Sprintf("%s:%d", QvDCAddr.Addr(), VDCPort))
	// Printed to stdout, not t.Log, so that it shows at once with or without -v.
	fmt.Printf(`
Quantix demo lab ready in %s (TCG).
  web UI       %s   (self-signed certificate: accept it in the browser)
  admin token  %s
  API          %s   (qx-ctl --url %s --token %s nodes list)
  node         %s at %s, hypervisor %s (%s)
Press Ctrl-C to power both machines off.
`, time.Since(start).Round(time.Second), ui, AdminToken, api, api, AdminToken,
		n.Hostname, n.ManagementIP, n.Hypervisor.State, n.Hypervisor.Accelerator)
	<-ctx.Done()
	fmt.Println("powering the demo lab off")
	lab.StopNode(t)
	if err := lab.QvDC.AwaitPowerOff(t, PowerOffTimeout); err != nil {
		t.Error(err)
	}
}
