package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent"
	"github.com/quantix/quantix/vdc/client"
)

func TestNodesList(t *testing.T) {
	l := newLab(t)
	f := l.seed()
	l.v.SetMaintenance(t, f.c.ID, true)

	cases := []struct {
		args      []string
		want      []string // hostnames, in order
		wantEmpty string   // stderr when no row matches
	}{
		{args: []string{"nodes", "list"}, want: []string{"hv-a", "hv-b", "hv-c"}},
		{args: []string{"nodes", "list", "--search", "HV-B"}, want: []string{"hv-b"}},
		{args: []string{"nodes", "list", "--search", "10.0.0.11"}, want: []string{"hv-a"}},
		{args: []string{"nodes", "list", "--search", "rack=r-hv-c"}, want: []string{"hv-c"}},
		{args: []string{"nodes", "list", "--search", f.b.ID[:13]}, want: []string{"hv-b"}},
		{args: []string{"nodes", "list", "--phase", "maintenance"}, want: []string{"hv-c"}},
		{args: []string{"nodes", "list", "--phase", "ready,maintenance"}, want: []string{"hv-a", "hv-b", "hv-c"}},
		{args: []string{"nodes", "list", "--phase", "ready", "--search", "hv-c"}, wantEmpty: "no nodes match (3 in all)"},
		{args: []string{"nodes", "list", "--phase", "not-ready"}, wantEmpty: "no nodes match (3 in all)"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args[2:], " "), func(t *testing.T) {
			r := l.must(tc.args...)
			header, rows := tableRows(t, r.stdout)
			if got := column(t, header, rows, "HOSTNAME"); !slices.Equal(got, tc.want) {
				t.Errorf("table hostnames = %q, want %q\n%s", got, tc.want, r)
			}
			if tc.wantEmpty != "" && !strings.Contains(r.stderr, tc.wantEmpty) {
				t.Errorf("stderr = %q, want %q", r.stderr, tc.wantEmpty)
			}
			var list quantix.NodeList
			decodeStrict(t, l.must(append(tc.args, "-o", "json")...).stdout, &list)
			var got []string
			for _, n := range list.Nodes {
				got = append(got, n.Hostname)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("json hostnames = %q, want %q", got, tc.want)
			}
			if list.Nodes == nil {
				t.Errorf("json nodes is null, want a list")
			}
		})
	}

	// The table shows each node's facts in its columns.
	r := l.must("nodes", "list")
	header, rows := tableRows(t, r.stdout)
	want := []string{"HOSTNAME", "MANAGEMENT IP", "PHASE", "HEARTBEAT", "CPU", "MEMORY", "VMS", "AGENT", "HYPERVISOR", "ID"}
	if !slices.Equal(header, want) {
		t.Fatalf("header = %q, want %q", header, want)
	}
	wantRows := [][]string{
		{"hv-a", "10.0.0.11", "ready", "N ago", "4 (12%)", "1.5/8.0 GiB", "2", "test-1", "available", f.a.ID},
		{"hv-b", "10.0.0.12", "ready", "N ago", "4", "8.0 GiB", "1", "test-1", "available", f.b.ID},
		{"hv-c", "10.0.0.13", "maintenance", "N ago", "4", "8.0 GiB", "0", "test-1", "available", f.c.ID},
	}
	for i := range rows {
		rows[i][3] = stripAges(rows[i][3])
	}
	if diff := cmp.Diff(wantRows, rows); diff != "" {
		t.Errorf("nodes list rows (-want +got):\n%s\n%s", diff, r.stdout)
	}

	// JSON round-trips into the API's own objects.
	var list quantix.NodeList
	decodeStrict(t, l.must("-o", "json", "nodes", "list").stdout, &list)
	api := l.v.Nodes(t)
	slices.SortFunc(api, func(a, b quantix.Node) int { return strings.Compare(a.Hostname, b.Hostname) })
	if diff := cmp.Diff(api, list.Nodes); diff != "" {
		t.Errorf("nodes list -o json differs from GET %s (-api +qx-ctl):\n%s", quantix.PathNodes, diff)
	}
}

func TestNodesShow(t *testing.T) {
	l := newLab(t)
	f := l.seed()
	l.v.SetMaintenance(t, f.a.ID, true)
	l.v.SetMaintenance(t, f.a.ID, false)

	r := l.must("nodes", "show", "hv-a")
	for _, want := range []string{
		"hostname:        hv-a", "id:              " + f.a.ID, "management ip:   10.0.0.11", "phase:           ready",
		"agent version:   test-1", "hypervisor:      available (libvirt 9.0.0, qemu:///system)",
		"cpu:             qemu64, 1 socket, 4 cores, 4 threads, 12.4% used", "memory:          1.5/8.0 GiB",
		"labels:          rack=r-hv-a", "machine id:      " + f.a.MachineID,
		"VMs (2):", "Storage pools (1):", "default", "/var/lib/libvirt/images", "20.0 GiB",
		"registered", "maintenance",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("nodes show hv-a lacks %q:\n%s", want, r.stdout)
		}
	}
	// The VM table lists db before web, each on its own aligned row.
	vmPart := r.stdout[strings.Index(r.stdout, "VMs (2):\n")+len("VMs (2):\n"):]
	vmPart = vmPart[:strings.Index(vmPart, "\n\n")]
	header, rows := tableRows(t, vmPart)
	if got := column(t, header, rows, "NAME"); !slices.Equal(got, []string{"db", "web"}) {
		t.Errorf("VMs of hv-a = %q, want db, web", got)
	}
	if got := column(t, header, rows, "MEMORY"); !slices.Equal(got, []string{"6.0 GiB", "2.0 GiB"}) {
		t.Errorf("VM memory = %q", got)
	}

	// The same node by id, by id in upper case and by hostname in upper case.
	for _, ref := range []string{f.a.ID, strings.ToUpper(f.a.ID), "HV-A"} {
		if got := l.must("nodes", "show", ref).stdout; stripAges(got) != stripAges(r.stdout) {
			t.Errorf("nodes show %s differs from nodes show hv-a:\n%s", ref, got)
		}
	}

	// --events limits the table; 3 events: registered, ready -> maintenance, back.
	evs := l.v.NodeEvents(t, f.a.ID)
	if len(evs) < 3 {
		t.Fatalf("hv-a has %d events, want at least 3", len(evs))
	}
	r1 := l.must("nodes", "show", "hv-a", "--events", "1")
	if want := fmt.Sprintf("Events (last 1 of %d; --events 0 shows all):", len(evs)); !strings.Contains(r1.stdout, want) ||
		!strings.Contains(r1.stdout, evs[len(evs)-1].Message) || strings.Contains(r1.stdout, evs[0].Message) {
		t.Errorf("nodes show --events 1 does not show exactly the last event %q:\n%s", evs[len(evs)-1].Message, r1.stdout)
	}

	// JSON: the node, its events, VMs and pools as the API has them.
	var d client.NodeDetail
	decodeStrict(t, l.must("nodes", "show", "hv-a", "-o", "json").stdout, &d)
	if diff := cmp.Diff(l.v.Node(t, f.a.ID), d.Node); diff != "" {
		t.Errorf("show -o json node (-api +qx-ctl):\n%s", diff)
	}
	if diff := cmp.Diff(evs, d.Events); diff != "" {
		t.Errorf("show -o json events (-api +qx-ctl):\n%s", diff)
	}
	wantVMs := client.VMsOf(l.v.VMs(t), f.a.ID)
	slices.SortFunc(wantVMs, func(a, b quantix.InventoryVM) int { return strings.Compare(a.Name, b.Name) })
	if diff := cmp.Diff(wantVMs, d.VMs); diff != "" {
		t.Errorf("show -o json vms (-api +qx-ctl):\n%s", diff)
	}
	if diff := cmp.Diff(client.PoolsOf(l.v.Pools(t), f.a.ID), d.StoragePools); diff != "" {
		t.Errorf("show -o json pools (-api +qx-ctl):\n%s", diff)
	}

	// hv-c: no VMs, no pools.
	rc := l.must("nodes", "show", "hv-c")
	if !strings.Contains(rc.stdout, "VMs (0):\n\nStorage pools (0):\n") {
		t.Errorf("nodes show hv-c:\n%s", rc.stdout)
	}
	decodeStrict(t, l.must("nodes", "show", "hv-c", "-o", "json").stdout, &d)
	if d.VMs == nil || len(d.VMs) != 0 || d.StoragePools == nil || len(d.StoragePools) != 0 {
		t.Errorf("hv-c json vms/pools = %v / %v, want empty lists", d.VMs, d.StoragePools)
	}

	// Node references that name no node or two nodes.
	twin := l.register(f.b.ID, "10.0.0.99", "", http.StatusCreated) // a hostname that looks like hv-b's id
	errCases := []struct {
		ref  string
		code int
		msg  string
	}{
		{"hv-z", exitNotFound, `qx-ctl: find node "hv-z": no node with id or hostname "hv-z"`},
		{"hv", exitNotFound, "did you mean hv-a, hv-b, hv-c?"},
		{newUUID(), exitNotFound, "no node with id or hostname"},
		{f.b.ID, exitFailure, fmt.Sprintf("is the id of node hv-b and the hostname of node %s; name the node by its id", twin.ID)},
	}
	for _, tc := range errCases {
		r := l.ctl("nodes", "show", tc.ref)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.msg) || r.stdout != "" {
			t.Errorf("nodes show %s: %s\nwant exit %d and stderr containing %q", tc.ref, r, tc.code, tc.msg)
		}
	}
	if r := l.must("nodes", "show", twin.ID); !strings.Contains(r.stdout, "hostname:        "+f.b.ID) {
		t.Errorf("nodes show <twin id> shows another node:\n%s", r.stdout)
	}
}

func TestInventory(t *testing.T) {
	l := newLab(t)
	f := l.seed()
	type row struct{ node, name string }
	cases := []struct {
		args []string
		want []row
		code int
	}{
		{args: []string{"vms", "list"}, want: []row{{"hv-a", "db"}, {"hv-a", "web"}, {"hv-b", evilName}, {"hv-b", "old"}}},
		{args: []string{"vms", "list", "--lost"}, want: []row{{"hv-b", "old"}}},
		{args: []string{"vms", "list", "--node", "hv-a"}, want: []row{{"hv-a", "db"}, {"hv-a", "web"}}},
		{args: []string{"vms", "list", "--node", f.b.ID, "--lost"}, want: []row{{"hv-b", "old"}}},
		{args: []string{"vms", "list", "--node", "hv-c"}, want: nil},
		{args: []string{"pools", "list"}, want: []row{{"hv-a", "default"}, {"hv-b", "images"}, {"hv-b", "scratch"}}},
		{args: []string{"pools", "list", "--lost"}, want: []row{{"hv-b", "scratch"}}},
		{args: []string{"pools", "list", "--node", "HV-B"}, want: []row{{"hv-b", "images"}, {"hv-b", "scratch"}}},
		{args: []string{"vms", "list", "--node", "hv-z"}, code: exitNotFound},
		{args: []string{"pools", "list", "--node", "hv-z"}, code: exitNotFound},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			r := l.ctl(tc.args...)
			if r.code != tc.code {
				t.Fatalf("%s\nwant exit %d", r, tc.code)
			}
			if tc.code != 0 {
				if !strings.Contains(r.stderr, `no node with id or hostname "hv-z"`) {
					t.Errorf("stderr = %q", r.stderr)
				}
				return
			}
			var got []row
			if tc.args[0] == "vms" {
				var list quantix.VMList
				decodeStrict(t, l.must(append(tc.args, "-o", "json")...).stdout, &list)
				for _, v := range list.VMs {
					got = append(got, row{v.Hostname, v.Name})
				}
			} else {
				var list quantix.PoolList
				decodeStrict(t, l.must(append(tc.args, "-o", "json")...).stdout, &list)
				for _, p := range list.StoragePools {
					got = append(got, row{p.Hostname, p.Name})
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("json rows = %q, want %q", got, tc.want)
			}
			header, rows := tableRows(t, r.stdout)
			if len(rows) != len(tc.want) {
				t.Fatalf("table has %d rows, want %d:\n%s", len(rows), len(tc.want), r.stdout)
			}
			for i, w := range tc.want {
				if rows[i][0] != w.node || rows[i][1] != cell(w.name) {
					t.Errorf("table row %d = %q, want %s %q", i, rows[i], w.node, cell(w.name))
				}
			}
			lost := column(t, header, rows, "LOST")
			for i, w := range tc.want {
				isLost := w.name == "old" || w.name == "scratch"
				if isLost != strings.HasPrefix(lost[i], "lost ") {
					t.Errorf("row %s: LOST = %q", w.name, lost[i])
				}
			}
		})
	}

	// The lost VM says why; hostile names reach the terminal without control
	// characters; the JSON keeps them exactly.
	r := l.must("vms", "list")
	if !strings.Contains(stripAges(r.stdout), "lost N ago: not reported in the node's full state") {
		t.Errorf("vms list does not give the lost reason:\n%s", r.stdout)
	}
	if strings.ContainsAny(r.stdout, "\x1b\t") || !strings.Contains(r.stdout, "evil?[31m?name?") {
		t.Errorf("vms list passes control characters through:\n%q", r.stdout)
	}
	var list quantix.VMList
	decodeStrict(t, l.must("vms", "list", "-o", "json").stdout, &list)
	api := l.v.VMs(t)
	sortVMs(api)
	if diff := cmp.Diff(api, list.VMs); diff != "" {
		t.Errorf("vms list -o json differs from GET %s (-api +qx-ctl):\n%s", quantix.PathVMs, diff)
	}
}

func TestMaintenance(t *testing.T) {
	l := newLab(t)
	f := l.seed()
	r := l.must("nodes", "maintenance", "hv-a", "on")
	if want := fmt.Sprintf("node hv-a (%s): maintenance on, phase maintenance\n", f.a.ID); r.stdout != want {
		t.Errorf("stdout = %q, want %q", r.stdout, want)
	}
	if got := l.v.Node(t, f.a.ID).Phase; got != quantix.PhaseMaintenance {
		t.Errorf("phase after maintenance on = %s", got)
	}
	_, rows := tableRows(t, l.must("nodes", "list", "--phase", "maintenance").stdout)
	if len(rows) != 1 || rows[0][0] != "hv-a" {
		t.Errorf("nodes in maintenance = %q", rows)
	}
	var n quantix.Node
	decodeStrict(t, l.must("nodes", "maintenance", f.a.ID, "off", "-o", "json").stdout, &n)
	if n.ID != f.a.ID || n.Phase != quantix.PhaseReady {
		t.Errorf("maintenance off -o json = %+v, want hv-a ready", n)
	}
	if got := l.v.Node(t, f.a.ID).Phase; got != quantix.PhaseReady {
		t.Errorf("phase after maintenance off = %s", got)
	}
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"nodes", "maintenance", "hv-a", "maybe"}, exitUsage, `"maybe": want on or off`},
		{[]string{"nodes", "maintenance", "hv-a"}, exitUsage, "missing arguments"},
		{[]string{"nodes", "maintenance", "hv-z", "on"}, exitNotFound, `no node with id or hostname "hv-z"`},
	} {
		if r := l.ctl(tc.args...); r.code != tc.code || !strings.Contains(r.stderr, tc.msg) {
			t.Errorf("qx-ctl %q: %s\nwant exit %d, stderr containing %q", tc.args, r, tc.code, tc.msg)
		}
	}
	if got := l.v.Node(t, f.a.ID).Phase; got != quantix.PhaseReady {
		t.Errorf("phase after refused commands = %s", got)
	}
}

// openPty returns a pseudo-terminal's controlling side and its terminal.
func openPty(t *testing.T) (master, tty *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pty: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

func TestDelete(t *testing.T) {
	l := newLab(t)
	f := l.seed()
	exists := func(n *agentNode) bool {
		return call(t, http.MethodGet, l.v.URL+quantix.PathNode(n.ID), l.v.AdminToken, nil, nil) == http.StatusOK
	}

	// Without --yes and without a terminal to ask on: refused, nothing deleted.
	r := l.ctl("nodes", "delete", "hv-c")
	if r.code != exitUsage || !strings.Contains(r.stderr, "refusing to delete node hv-c") || !strings.Contains(r.stderr, "--yes") {
		t.Errorf("delete without --yes: %s", r)
	}
	if !exists(f.c) {
		t.Fatalf("hv-c is gone after a refused delete")
	}

	// On a terminal qx-ctl asks; only y or yes deletes.
	for _, tc := range []struct {
		answer  string
		code    int
		deleted bool
	}{
		{"n\n", exitFailure, false},
		{"\n", exitFailure, false},
		{"yes please\n", exitFailure, false},
		{"y\n", exitOK, true},
	} {
		master, tty := openPty(t)
		if _, err := master.WriteString(tc.answer); err != nil {
			t.Fatal(err)
		}
		r := l.ctlIn(tty, "nodes", "delete", "hv-c")
		if r.code != tc.code || !strings.Contains(r.stderr, "Delete node hv-c ("+f.c.ID+", ready, 0 VMs)?") || !strings.Contains(r.stderr, "[y/N]") {
			t.Errorf("answer %q: %s\nwant exit %d after the question", tc.answer, r, tc.code)
		}
		if exists(f.c) == tc.deleted {
			t.Errorf("answer %q: node deleted = %v, want %v", tc.answer, !exists(f.c), tc.deleted)
		}
		if !tc.deleted && !strings.Contains(r.stderr, "not confirmed; node hv-c kept") {
			t.Errorf("answer %q: stderr = %q", tc.answer, r.stderr)
		}
		if tc.deleted && r.stdout != fmt.Sprintf("deleted node hv-c (%s)\n", f.c.ID) {
			t.Errorf("answer %q: stdout = %q", tc.answer, r.stdout)
		}
	}

	// Ctrl-C at the question (the signal context ends): nothing deleted.
	_, tty := openPty(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel) // as signal.NotifyContext does on SIGINT
	var out, errb bytes.Buffer
	code := run(ctx, []string{"nodes", "delete", "hv-a"}, tty, &out, &errb)
	cancel()
	l.record(out.String(), errb.String())
	if code != exitFailure || !strings.Contains(errb.String(), "interrupted; node hv-a kept") || !exists(f.a) {
		t.Errorf("interrupted question: exit %d, stderr %q, hv-a exists %v", code, errb.String(), exists(f.a))
	}

	// --yes with JSON: the deleted node; it is gone from the registry and its
	// agent's heartbeats now get 404 (it must register again).
	var n quantix.Node
	decodeStrict(t, l.must("-o", "json", "nodes", "delete", "--yes", "hv-b").stdout, &n)
	if n.ID != f.b.ID || n.Hostname != "hv-b" {
		t.Errorf("delete -o json = %+v, want hv-b", n)
	}
	if exists(f.b) {
		t.Errorf("hv-b still in the registry after delete --yes")
	}
	if code := l.heartbeat(f.b, 1, 1); code != http.StatusNotFound {
		t.Errorf("heartbeat of the deleted hv-b: HTTP %d, want 404", code)
	}
	_, rows := tableRows(t, l.must("nodes", "list").stdout)
	if len(rows) != 1 || rows[0][0] != "hv-a" {
		t.Errorf("nodes after deleting hv-b and hv-c = %q, want hv-a only", rows)
	}
	if r := l.ctl("nodes", "delete", "-y", "hv-b"); r.code != exitNotFound || !strings.Contains(r.stderr, `no node with id or hostname "hv-b"`) {
		t.Errorf("delete hv-b twice: %s\nwant exit 3", r)
	}
	if r := l.ctl("nodes", "delete", "--yes", f.b.ID); r.code != exitNotFound {
		t.Errorf("delete hv-b by id twice: %s\nwant exit 3", r)
	}
	if !exists(f.a) {
		t.Errorf("hv-a is gone")
	}
}

func TestTokensCreate(t *testing.T) {
	l := newLab(t)

	// Defaults: one use, 24 hours, the URL qx-ctl talks to (a loopback one here,
	// which earns a note).
	r := l.must("tokens", "create")
	if !strings.Contains(r.stderr, "loopback address nodes cannot reach") {
		t.Errorf("no loopback note on stderr: %q", r.stderr)
	}
	token, cmdline, agentTOML := parseTokenOutput(t, r.stdout)
	if !strings.Contains(r.stdout, "uses left:   1") || !strings.Contains(r.stdout, "(in 24h)") {
		t.Errorf("tokens create output:\n%s", r.stdout)
	}
	// The kernel command line and agent.toml say the same to the real agent parsers.
	cl := agent.CmdlineFrom(quantix.ParseCmdline("console=ttyS0 " + cmdline))
	if cl.VDC != l.v.AgentURL || cl.Token != token {
		t.Errorf("kernel command line %q gives vdc %q token %q, want %q %q", cmdline, cl.VDC, cl.Token, l.v.AgentURL, token)
	}
	if pin, _, err := quantix.ParseJoinToken(token); err != nil || pin != l.v.Pin {
		t.Errorf("token %q: pin %q, %v; want the agent CA pin %s", token, pin, err, l.v.Pin)
	}
	path := filepath.Join(t.TempDir(), "agent.toml")
	writeFile(t, path, agentTOML, 0o600)
	fc, err := agent.Load(path)
	if err != nil || fc.ControlPlane != l.v.AgentURL || fc.JoinToken != token {
		t.Errorf("agent.toml %q loads as %+v, %v", agentTOML, fc, err)
	}
	// The token registers exactly one node.
	l.register("new-1", "10.0.0.21", token, http.StatusCreated)
	l.register("new-2", "10.0.0.22", token, http.StatusUnauthorized)

	// JSON, more uses, a TTL, a description and the URL nodes use.
	var tok quantix.JoinToken
	out := l.must("tokens", "create", "--uses", "2", "--ttl", "1h", "--description", "rack 3",
		"--node-url", "http://10.0.0.1:8080/", "-o", "json")
	if strings.Contains(out.stderr, "loopback") {
		t.Errorf("loopback note with --node-url: %q", out.stderr)
	}
	if err := json.Unmarshal([]byte(out.stdout), &tok); err != nil {
		t.Fatal(err)
	}
	var full tokenOutput
	decodeStrict(t, out.stdout, &full)
	left := time.Until(tok.ExpiresAt)
	if tok.UsesLeft != 2 || tok.Description != "rack 3" || tok.ID == "" || left < 59*time.Minute || left > 61*time.Minute {
		t.Errorf("tokens create -o json = %+v (expires in %s)", tok, left)
	}
	if want := "quantix.vdc=https://10.0.0.1:8080 quantix.token=" + tok.Token; full.KernelCmdline != want {
		t.Errorf("kernel_cmdline = %q, want %q", full.KernelCmdline, want)
	}
	if want := "control_plane = \"https://10.0.0.1:8080\"\njoin_token = \"" + tok.Token + "\"\n"; full.AgentTOML != want {
		t.Errorf("agent_toml = %q, want %q", full.AgentTOML, want)
	}
	l.register("new-3", "10.0.0.23", tok.Token, http.StatusCreated)
	l.register("new-4", "10.0.0.24", tok.Token, http.StatusCreated)
	l.register("new-5", "10.0.0.25", tok.Token, http.StatusUnauthorized)

	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"tokens", "create", "--ttl", "9000h"}, exitFailure, "ttl_seconds is 32400000, want 1..31536000"},
		{[]string{"tokens", "create", "--ttl", "1500ms"}, exitUsage, "want whole seconds"},
		{[]string{"tokens", "create", "--ttl", "0s"}, exitUsage, "want at least 1s"},
		{[]string{"tokens", "create", "--uses", "0"}, exitUsage, "want 1 or more"},
		{[]string{"tokens", "create", "--node-url", "10.0.0.1:8080"}, exitUsage, "http:// or https://"},
		{[]string{"tokens", "create", "extra"}, exitUsage, `unexpected argument "extra"`},
		{[]string{"tokens", "list"}, exitUsage, "want 'tokens create'"},
	} {
		if r := l.ctl(tc.args...); r.code != tc.code || !strings.Contains(r.stderr, tc.msg) || r.stdout != "" {
			t.Errorf("qx-ctl %q: %s\nwant exit %d, stderr containing %q", tc.args, r, tc.code, tc.msg)
		}
	}
}

// parseTokenOutput picks the token, the kernel command line and the agent.toml
// lines from `tokens create`.
func parseTokenOutput(t *testing.T, out string) (token, cmdline, agentTOML string) {
	t.Helper()
	lines := strings.Split(out, "\n")
	for i, line := range lines {
		switch {
		case strings.HasPrefix(line, "join token:"):
			token = strings.TrimSpace(strings.TrimPrefix(line, "join token:"))
		case strings.HasPrefix(line, "quantix.vdc="):
			cmdline = line
		case strings.HasPrefix(line, "Or in "+quantix.AgentConfig+":"):
			for _, l := range lines[i+1:] {
				if l == "" {
					break
				}
				agentTOML += l + "\n"
			}
		}
	}
	if token == "" || cmdline == "" || agentTOML == "" {
		t.Fatalf("tokens create output lacks the token, the command line or agent.toml:\n%s", out)
	}
	return token, cmdline, agentTOML
}
