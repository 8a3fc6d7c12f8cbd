package web_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/initd/inittest"
	"github.com/quantix/quantix/vdc/client"
	"github.com/quantix/quantix/vdc/vdctest"
	"github.com/quantix/quantix/vdc/web/webtest"
)

// TestBrowserNodeOS shows a host's release and A/B slots after a rollback, as its
// heartbeat reports them, and the upgrades page with a failed upgrade's reason.
func TestBrowserNodeOS(t *testing.T) {
	skipShort(t)
	key := vdctest.NewReleaseKey(t, "ui-test")
	v := vdctest.Start(t, vdctest.Options{HeartbeatInterval: time.Minute, TrustedKeysFiles: []string{key.Pub}, UpgradeNodeTimeout: time.Second})
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

	// An upgrade the node never works on fails at upgrade_node_timeout.
	var rel quantix.Release
	uploadRelease(t, v, vdctest.ReleaseBundle(t, key, quantix.ImageQuantixOS, "1.1.0", 4096), &rel)
	var u quantix.Upgrade
	v.Do(t, http.MethodPost, quantix.PathUpgrades, quantix.UpgradeRequest{Release: rel.ID, All: true}, &u, http.StatusCreated)
	b.Do("open the upgrades page", chromedp.Navigate(v.UIURL+"/ui/upgrades"))
	row := `document.querySelector('#upgrades tbody tr[data-id="` + u.ID + `"]')`
	b.Wait("the failed upgrade's row", row+` && `+row+`.cells[2].textContent === 'failed'`, 20*time.Second)
	if got := b.Text(`#upgrades tbody tr[data-id="` + u.ID + `"]`); !strings.Contains(got, "quantix-os 1.1.0") ||
		!strings.Contains(got, "hv-os.lab: failed (not staged within 1s)") || !strings.Contains(got, "node hv-os.lab: not staged within 1s") {
		t.Errorf("upgrade row = %q, want the release, the node's phase and error, and the reason", got)
	}
	if got := b.Text("#releases tbody"); !strings.Contains(got, "1.1.0") || !strings.Contains(got, "ui-test") {
		t.Errorf("releases table = %q, want 1.1.0 signed by ui-test", got)
	}
	b.NoErrors("upgrades page")
	b.Screenshot("upgrades")
}

// uploadRelease uploads a bundle folder as qx-ctl does (vdc/client).
func uploadRelease(t *testing.T, v *vdctest.VDC, dir string, out *quantix.Release) {
	t.Helper()
	bu, err := client.OpenBundle(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer bu.Close()
	c, err := client.New(client.Config{URL: v.URL, Token: v.AdminToken})
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.UploadRelease(context.Background(), bu, bu.Body)
	if err != nil {
		t.Fatalf("upload release %s: %v", dir, err)
	}
	*out = r
}

// TestBrowserController shows this vDC's own slots on the upgrades page, from
// init's real control socket (inittest), and stages an uploaded qvdc release
// into slot b through the card's form.
func TestBrowserController(t *testing.T) {
	skipShort(t)
	in := inittest.Start(t, inittest.Options{Image: quantix.ImageQvDC, Version: "2.0.0", DataDir: t.TempDir()})
	v := vdctest.Start(t, vdctest.Options{HeartbeatInterval: time.Minute, TrustedKeysFiles: []string{in.TrustedKeysFile()}, Version: "2.0.0",
		InitSocket: in.Socket})
	var rel quantix.Release
	uploadRelease(t, v, in.Bundle(quantix.ImageQvDC, "2.1.0", 4096, true), &rel)
	b := webtest.New(t, webtest.SPKIHashFile(t, v.CertFile))
	b.Login(v.UIURL, v.AdminToken)

	b.Do("open the upgrades page", chromedp.Navigate(v.UIURL+"/ui/upgrades"))
	b.Wait("the controller card", `document.querySelector('#c-version').textContent === 'qvdc 2.0.0' && !document.querySelector('#c-stage').disabled`, 15*time.Second)
	for sel, want := range map[string]string{"#c-slot": "a · good", "#c-other": "empty", "#c-rollback": "none", "#c-event": "none"} {
		if got := b.Text(sel); got != want {
			t.Errorf("%s = %q, want %q", sel, got, want)
		}
	}
	b.Do("stage the release", chromedp.SetValue(chromedp.CSS("#c-release"), rel.ID), chromedp.Click(chromedp.CSS("#c-stage")))
	b.Wait("slot b staged", `document.body.dataset.staged === '2.1.0' && document.querySelector('#c-other').textContent === 'b · qvdc 2.1.0 · boots next'`, 15*time.Second)
	if got := b.Text("#c-event"); !strings.Contains(got, " · staged qvdc 2.1.0 (release "+rel.ID) {
		t.Errorf("#c-event = %q, want the stage", got)
	}
	st, err := in.Client().Slots(context.Background())
	if err != nil || st.Next != quantix.SlotB || st.Slots[1].Version != "2.1.0" || in.Count(string(quantix.Reboot)) != 0 {
		t.Errorf("init's slots after the form = %+v, %v (reboots %d); want qvdc 2.1.0 in slot b, next, no reboot", st, err, in.Count(string(quantix.Reboot)))
	}
	b.NoErrors("upgrades page")
	b.Screenshot("controller")
}
