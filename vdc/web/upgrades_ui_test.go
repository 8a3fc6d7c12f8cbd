package web_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/vdctest"
	"github.com/quantix/quantix/vdc/web/webtest"
)

// TestBrowserNodeOS shows a host's release and A/B slots after a rollback, as its
// heartbeat reports them, and the upgrades page with a failed upgrade's reason.
func TestBrowserNodeOS(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{HeartbeatInterval: time.Minute})
	b := webtest.New(t, webtest.SPKIHashFile(t, v.CertFile))
	c := v.AgentClient()
	a := registerAgent(t, v, c, "hv-os.lab")
	nodeOS := quantix.NodeOS{Image: quantix.ImageQuantixOS, Version: "1.0.0", Slots: &quantix.SlotsStatus{
		Booted: quantix.SlotA, State: quantix.SlotRolledBack, RolledBackFrom: quantix.SlotB, Reason: "health gate vdc: no heartbeat answered",
		Slots: []quantix.SlotInfo{{Slot: "a", Good: true, Image: quantix.ImageQuantixOS, Version: "1.0.0"},
			{Slot: "b", Image: quantix.ImageQuantixOS, Version: "1.1.0"}}}}
	agentCall(t, c, http.MethodPost, v.AgentURL+quantix.PathHeartbeat(a.ID), a.Secret,
		quantix.HeartbeatRequest{ManagementIP: "10.1.2.3", OS: &nodeOS}, nil, http.StatusOK)
	b.Login(v.UIURL, v.AdminToken)

	b.Do("open the host page", chromedp.Navigate(v.UIURL+"/ui/hosts/"+a.ID))
	b.Wait("the OS card", `document.querySelector('#os-version').textContent === 'quantix-os 1.0.0'`, 15*time.Second)
	for sel, want := range map[string]string{
		"#os-slot":     "a · rolled-back",
		"#os-other":    "b · quantix-os 1.1.0",
		"#os-rollback": "from slot b: health gate vdc: no heartbeat answered",
		"#os-upgrade":  "none",
	} {
		if got := b.Text(sel); got != want {
			t.Errorf("%s = %q, want %q", sel, got, want)
		}
	}
	b.NoErrors("host page")
	b.Screenshot("host-os")

	b.Do("open the upgrades page", chromedp.Navigate(v.UIURL+"/ui/upgrades"))
	b.Wait("upgrades loaded", `document.body.dataset.loaded === 'true'`, 15*time.Second)
	if !strings.Contains(b.Text("#upgrades-empty"), "No upgrades") || b.Text("#up-count") != "0" {
		t.Errorf("upgrades page without upgrades: count %q, empty note %q", b.Text("#up-count"), b.Text("#upgrades-empty"))
	}
	b.NoErrors("upgrades page")
}
