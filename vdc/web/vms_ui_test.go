package web_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/vdctest"
	"github.com/quantix/quantix/vdc/web/webtest"
)

// TestBrowserVMs creates a VM with the form, follows its observed state as the node
// reports it, stops it from the list, and reads its console on the VM page.
func TestBrowserVMs(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{HeartbeatInterval: time.Second})
	b := webtest.New(t, webtest.SPKIHashFile(t, v.CertFile))
	c := v.AgentClient()
	a := registerAgent(t, v, c, "hv-1.lab")
	hb := startHeartbeats(t, v, a)
	defer hb.Stop()
	b.Login(v.UIURL, v.AdminToken)

	b.Do("open the VMs page", chromedp.Navigate(v.UIURL+"/ui/vms"))
	b.Wait("managed VMs loaded", `document.body.dataset.managedLoaded === 'true' && !document.querySelector('#managed-empty').hidden`, 15*time.Second)
	b.Do("open the create form", chromedp.Click(chromedp.CSS("#new-vm")))
	b.Wait("hosts in the form", `document.querySelector('#vm-node').options.length === 2`, 10*time.Second)
	b.Do("fill and submit the form",
		chromedp.SendKeys(chromedp.CSS("#vm-name"), "web-1"),
		chromedp.SetValue(chromedp.CSS("#vm-memory"), "256"),
		chromedp.SetValue(chromedp.CSS("#vm-disk-size"), "1"),
		chromedp.Click(chromedp.CSS("#create-vm")))
	row := `document.querySelector('#managed tbody tr[data-name="web-1"]')`
	b.Wait("the new VM's row", row+` && `+row+`.cells[2].textContent.startsWith('Pending')`, 15*time.Second)
	b.NoErrors("vms page after create")
	b.Screenshot("vms-created")

	var vm quantix.ManagedVM
	v.Do(t, http.MethodGet, quantix.PathVM("web-1"), nil, &vm, http.StatusOK)
	if vm.NodeID != a.ID || vm.Spec.MemoryBytes != 256<<20 || len(vm.Spec.Disks) != 1 || vm.Spec.Disks[0].SizeBytes != 1<<30 || vm.Wanted != quantix.WantedRunning {
		t.Fatalf("VM created by the form = %+v", vm)
	}
	// The node reports it running: the list follows without a reload.
	a.putState(t, v, c, []quantix.VM{{UUID: vm.UUID, Name: "web-1", PowerState: quantix.PowerRunning, VCPUs: 1, MemoryBytes: 256 << 20}}, nil)
	b.Wait("observed running", row+`.cells[2].textContent === 'Running' && `+row+`.cells[1].textContent === 'Running'`, 15*time.Second)

	// Stop from the list: the wanted state changes at once, the observed one stays
	// the node's word.
	b.Do("stop it", chromedp.Click(chromedp.CSS(`#managed tbody tr[data-name="web-1"] button[data-action="stop"]`)))
	b.Wait("wanted stopped", row+`.cells[1].textContent === 'Stopped' && `+row+`.cells[2].textContent === 'Running'`, 15*time.Second)
	b.Screenshot("vms-stopping")

	// The VM page shows the console its node sent and the VM's history.
	req, _ := http.NewRequest(http.MethodPut, v.AgentURL+quantix.PathNodeConsole(a.ID, vm.UUID), strings.NewReader("SeaBIOS\r\nQUANTIX-GUEST-MARKER <b>not html</b>\r\n"))
	req.Header.Set("Authorization", "Bearer "+a.Secret)
	if resp, err := c.Do(req); err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("console put: %v %v", resp, err)
	}
	b.Do("open the VM", chromedp.Click(chromedp.CSS(`#managed tbody tr[data-name="web-1"] a`)))
	b.Wait("VM page", `location.pathname === '/ui/vms/web-1' && document.body.dataset.loaded === 'true'`, 15*time.Second)
	b.Wait("console output", `document.querySelector('#console').textContent.includes('QUANTIX-GUEST-MARKER <b>not html</b>')`, 10*time.Second)
	b.Wait("events", `document.querySelector('#v-events tbody').textContent.includes('created') && document.querySelector('#v-events tbody').textContent.includes('stop')`, 10*time.Second)
	if got := b.Text("#v-wanted"); got != "wanted Stopped" {
		t.Errorf("wanted badge = %q, want 'wanted Stopped'", got)
	}
	if webtest.Eval[int](b, `document.querySelectorAll('#console b').length`) != 0 {
		t.Errorf("console output was rendered as HTML")
	}
	b.NoErrors("vm page")
	b.Screenshot("vm-page")

	// The host page lists its managed VMs.
	b.Do("open the host", chromedp.Navigate(v.UIURL+"/ui/hosts/"+a.ID))
	b.Wait("host's managed VMs", `document.querySelector('#h-managed tbody').textContent.includes('web-1')`, 15*time.Second)

	// An upload from the image library: streamed, hashed, listed.
	img := bytes.Repeat([]byte{0xeb, 0xfe}, 128<<10)
	file := filepath.Join(t.TempDir(), "boot.img")
	if err := os.WriteFile(file, img, 0o644); err != nil {
		t.Fatal(err)
	}
	b.Do("open images", chromedp.Navigate(v.UIURL+"/ui/images"))
	b.Wait("images page", `document.body.dataset.loaded === 'true' && !document.querySelector('#images-empty').hidden`, 15*time.Second)
	b.Do("upload", chromedp.SetUploadFiles(chromedp.CSS("#img-file"), []string{file}), chromedp.Click(chromedp.CSS("#upload-btn")))
	b.Wait("uploaded", `document.body.dataset.uploaded === 'true' && document.querySelector('#images tbody').textContent.includes('boot.img')`, 15*time.Second)
	sum := sha256.Sum256(img)
	var list quantix.ImageList
	v.Do(t, http.MethodGet, quantix.PathImages, nil, &list, http.StatusOK)
	if len(list.Images) != 1 || list.Images[0].SHA256 != hex.EncodeToString(sum[:]) || list.Images[0].Format != quantix.ImageRaw {
		t.Errorf("images after the browser upload = %+v, want boot.img, raw, with its sha256", list.Images)
	}
	b.NoErrors("images page")
	b.Screenshot("images")
}
