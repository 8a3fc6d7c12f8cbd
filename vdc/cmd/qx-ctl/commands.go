package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/client"
)

// call bounds one step with --timeout (a confirmation prompt is not inside one).
func (c *cli) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.opts.timeout)
}

func (c *cli) nodes(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usagef("nodes: want list, show, delete or maintenance")
	}
	switch args[0] {
	case "list", "ls":
		return c.nodesList(ctx, args[1:])
	case "show", "get":
		return c.nodesShow(ctx, args[1:])
	case "delete", "rm":
		return c.nodesDelete(ctx, args[1:])
	case "maintenance":
		return c.nodesMaintenance(ctx, args[1:])
	}
	return usagef("nodes: unknown subcommand %q (want list, show, delete or maintenance)", args[0])
}

// parsePhases reads --phase: phase names separated by commas; "not-ready" is
// accepted for not_ready.
func parsePhases(s string) (map[string]bool, error) {
	if s == "" {
		return nil, nil
	}
	out := map[string]bool{}
	for _, p := range strings.Split(s, ",") {
		p = strings.ReplaceAll(strings.ToLower(strings.TrimSpace(p)), "-", "_")
		switch p {
		case quantix.PhaseReady, quantix.PhaseNotReady, quantix.PhaseDisconnected, quantix.PhaseMaintenance:
			out[p] = true
		default:
			return nil, usagef("--phase %q: %q is not a phase (want ready, not_ready, disconnected or maintenance)", s, p)
		}
	}
	return out, nil
}

// matchNode is --search: a case-insensitive substring of hostname, id, management
// IP, agent version or a label "key=value".
func matchNode(n quantix.Node, s string) bool {
	s = strings.ToLower(s)
	fields := []string{n.Hostname, n.ID, n.ManagementIP, n.AgentVersion}
	for k, v := range n.Labels {
		fields = append(fields, k+"="+v)
	}
	for _, f := range fields {
		if strings.Contains(strings.ToLower(f), s) {
			return true
		}
	}
	return false
}

func sortNodes(nodes []quantix.Node) {
	sort.SliceStable(nodes, func(i, j int) bool {
		if nodes[i].Hostname != nodes[j].Hostname {
			return nodes[i].Hostname < nodes[j].Hostname
		}
		return nodes[i].ID < nodes[j].ID
	})
}

func (c *cli) nodesList(ctx context.Context, args []string) error {
	fs := c.flagSet("nodes list")
	phase := fs.String("phase", "", "only nodes in these `phases` (comma-separated)")
	search := fs.String("search", "", "only nodes whose hostname, id, IP, agent version or label contains `text`")
	rest, err := parseFlags(fs, args, false)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("nodes list: unexpected argument %q", rest[0])
	}
	phases, err := parsePhases(*phase)
	if err != nil {
		return err
	}
	if err := c.connect(); err != nil {
		return err
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	all, err := c.client.Nodes(cctx)
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	nodes := []quantix.Node{}
	for _, n := range all {
		if (phases == nil || phases[n.Phase]) && (*search == "" || matchNode(n, *search)) {
			nodes = append(nodes, n)
		}
	}
	sortNodes(nodes)
	if c.opts.output == "json" {
		return writeJSON(c.stdout, quantix.NodeList{Nodes: nodes})
	}
	if len(nodes) == 0 {
		c.noRows("nodes", len(all))
	}
	return c.nodeTable(nodes)
}

// noRows says on stderr why a table is empty, keeping stdout a table.
func (c *cli) noRows(what string, total int) {
	if total == 0 {
		fmt.Fprintf(c.stderr, "no %s\n", what)
	} else {
		fmt.Fprintf(c.stderr, "no %s match (%d in all)\n", what, total)
	}
}

func (c *cli) nodeTable(nodes []quantix.Node) error {
	now := c.now()
	t := newTable(c.stdout, "HOSTNAME", "MANAGEMENT IP", "PHASE", "HEARTBEAT", "CPU", "MEMORY", "VMS", "AGENT", "HYPERVISOR", "ID")
	for _, n := range nodes {
		t.row(n.Hostname, n.ManagementIP, phaseWord(n.Phase), heartbeatAge(now, n.LastHeartbeat), cpuCell(n),
			memoryCell(n), strconv.Itoa(n.VMCount), n.AgentVersion, hypervisorWord(n.Hypervisor.State), n.ID)
	}
	return t.flush()
}

// nodeArgs parses the flags and exactly want arguments of a node command.
func (c *cli) nodeArgs(fs *flag.FlagSet, args []string, name string, want int, what string) ([]string, error) {
	rest, err := parseFlags(fs, args, false)
	if err != nil {
		return nil, err
	}
	switch {
	case len(rest) < want:
		return nil, usagef("%s: missing %s", name, what)
	case len(rest) > want:
		return nil, usagef("%s: unexpected argument %q", name, rest[want])
	}
	return rest, nil
}

func (c *cli) resolve(ctx context.Context, ref string) (quantix.Node, error) {
	cctx, cancel := c.call(ctx)
	defer cancel()
	n, err := c.client.ResolveNode(cctx, ref)
	if err != nil {
		return n, fmt.Errorf("find node %q: %w", ref, err)
	}
	return n, nil
}

func (c *cli) nodesShow(ctx context.Context, args []string) error {
	fs := c.flagSet("nodes show")
	events := fs.Int("events", 20, "show the last `n` events in the table (0: all)")
	rest, err := c.nodeArgs(fs, args, "nodes show", 1, "the node (id or hostname)")
	if err != nil {
		return err
	}
	if *events < 0 {
		return usagef("nodes show: --events %d: want 0 (all) or more", *events)
	}
	if err := c.connect(); err != nil {
		return err
	}
	n, err := c.resolve(ctx, rest[0])
	if err != nil {
		return err
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	d, err := c.client.NodeDetail(cctx, n.ID)
	if err != nil {
		return fmt.Errorf("show node %s: %w", n.Hostname, err)
	}
	sortVMs(d.VMs)
	sortPools(d.StoragePools)
	if c.opts.output == "json" {
		return writeJSON(c.stdout, d)
	}
	return c.nodeDetail(d, *events)
}

func (c *cli) nodeDetail(d client.NodeDetail, maxEvents int) error {
	now := c.now()
	n := d.Node
	kv := newTable(c.stdout)
	kv.row("hostname:", n.Hostname)
	kv.row("id:", n.ID)
	kv.row("management ip:", n.ManagementIP)
	kv.row("phase:", phaseWord(n.Phase))
	hb := heartbeatAge(now, n.LastHeartbeat)
	if n.LastHeartbeat != nil {
		hb += " (" + stamp(*n.LastHeartbeat) + ")"
	}
	if n.HeartbeatInterval > 0 {
		hb += fmt.Sprintf(", every %ds", n.HeartbeatInterval)
	}
	kv.row("last heartbeat:", hb)
	kv.row("registered:", ago(now, n.RegisteredAt)+" ("+stamp(n.RegisteredAt)+")")
	kv.row("agent version:", n.AgentVersion)
	kv.row("hypervisor:", hypervisorDetail(n.Hypervisor))
	kv.row("cpu:", cpuDetail(n))
	kv.row("memory:", memoryCell(n))
	kv.row("machine id:", n.MachineID)
	if len(n.Labels) > 0 {
		keys := make([]string, 0, len(n.Labels))
		for k := range n.Labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for i, k := range keys {
			keys[i] = k + "=" + n.Labels[k]
		}
		kv.row("labels:", strings.Join(keys, " "))
	}
	if err := kv.flush(); err != nil {
		return err
	}

	fmt.Fprintf(c.stdout, "\nVMs (%d):\n", len(d.VMs))
	if len(d.VMs) > 0 {
		if err := c.vmTable(d.VMs, false); err != nil {
			return err
		}
	}
	fmt.Fprintf(c.stdout, "\nStorage pools (%d):\n", len(d.StoragePools))
	if len(d.StoragePools) > 0 {
		if err := c.poolTable(d.StoragePools, false); err != nil {
			return err
		}
	}
	evs := d.Events
	if maxEvents > 0 && len(evs) > maxEvents {
		fmt.Fprintf(c.stdout, "\nEvents (last %d of %d; --events 0 shows all):\n", maxEvents, len(evs))
		evs = evs[len(evs)-maxEvents:]
	} else {
		fmt.Fprintf(c.stdout, "\nEvents (%d):\n", len(evs))
	}
	if len(evs) == 0 {
		return nil
	}
	t := newTable(c.stdout, "AGE", "TIME", "KIND", "MESSAGE")
	for _, e := range evs {
		t.row(ago(now, e.At), stamp(e.At), e.Kind, e.Message)
	}
	return t.flush()
}

func (c *cli) nodesDelete(ctx context.Context, args []string) error {
	fs := c.flagSet("nodes delete")
	yes := fs.Bool("yes", false, "delete without asking")
	fs.BoolVar(yes, "y", false, "delete without asking")
	force := fs.Bool("force", false, "also delete the managed VMs assigned to the node")
	rest, err := c.nodeArgs(fs, args, "nodes delete", 1, "the node (id or hostname)")
	if err != nil {
		return err
	}
	if err := c.connect(); err != nil {
		return err
	}
	n, err := c.resolve(ctx, rest[0])
	if err != nil {
		return err
	}
	if !*yes {
		if !isTerminal(c.stdin) {
			return usagef("nodes delete: refusing to delete node %s (%s) without --yes: stdin is not a terminal to ask on", n.Hostname, n.ID)
		}
		ok, err := c.confirm(ctx, fmt.Sprintf("Delete node %s (%s, %s, %d VMs)? Its agent must register again with a join token to come back. [y/N] ",
			n.Hostname, n.ID, phaseWord(n.Phase), n.VMCount))
		if err != nil {
			return fmt.Errorf("nodes delete: interrupted; node %s kept: %w", n.Hostname, err)
		}
		if !ok {
			return fmt.Errorf("nodes delete: not confirmed; node %s kept", n.Hostname)
		}
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	del := c.client.DeleteNode
	if *force {
		del = c.client.DeleteNodeForce
	}
	if err := del(cctx, n.ID); err != nil {
		return fmt.Errorf("delete node %s: %w", n.Hostname, err)
	}
	if c.opts.output == "json" {
		return writeJSON(c.stdout, n)
	}
	fmt.Fprintf(c.stdout, "deleted node %s (%s)\n", n.Hostname, n.ID)
	return nil
}

// confirm asks a yes/no question on stderr and reads the answer from stdin; only
// "y" or "yes" is yes, end of input is no. An interrupt (ctx) ends the wait: the
// signal handler keeps Ctrl-C from killing the process by itself.
func (c *cli) confirm(ctx context.Context, question string) (bool, error) {
	fmt.Fprint(c.stderr, question)
	answer := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(c.stdin).ReadString('\n')
		answer <- line
	}()
	select {
	case line := <-answer:
		if !strings.HasSuffix(line, "\n") {
			fmt.Fprintln(c.stderr)
		}
		switch strings.ToLower(strings.TrimSpace(line)) {
		case "y", "yes":
			return true, nil
		}
		return false, nil
	case <-ctx.Done():
		fmt.Fprintln(c.stderr)
		return false, ctx.Err()
	}
}

func (c *cli) nodesMaintenance(ctx context.Context, args []string) error {
	fs := c.flagSet("nodes maintenance")
	rest, err := c.nodeArgs(fs, args, "nodes maintenance", 2, "arguments: want <id|hostname> on|off")
	if err != nil {
		return err
	}
	var on bool
	switch strings.ToLower(rest[1]) {
	case "on", "true", "yes":
		on = true
	case "off", "false", "no":
	default:
		return usagef("nodes maintenance: %q: want on or off", rest[1])
	}
	if err := c.connect(); err != nil {
		return err
	}
	n, err := c.resolve(ctx, rest[0])
	if err != nil {
		return err
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	after, err := c.client.SetMaintenance(cctx, n.ID, on)
	if err != nil {
		return fmt.Errorf("set maintenance of node %s: %w", n.Hostname, err)
	}
	if c.opts.output == "json" {
		return writeJSON(c.stdout, after)
	}
	state := "off"
	if on {
		state = "on"
	}
	fmt.Fprintf(c.stdout, "node %s (%s): maintenance %s, phase %s\n", after.Hostname, after.ID, state, phaseWord(after.Phase))
	return nil
}

// listCommand runs "<what> list" for the inventories.
func (c *cli) listCommand(ctx context.Context, what string, args []string, list func(context.Context, string, bool) error) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "ls") {
		return usagef("%s: want '%s list'", what, what)
	}
	fs := c.flagSet(what + " list")
	node := fs.String("node", "", "only those of this node (`id or hostname`)")
	lost := fs.Bool("lost", false, "only those marked lost")
	rest, err := parseFlags(fs, args[1:], false)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("%s list: unexpected argument %q", what, rest[0])
	}
	if err := c.connect(); err != nil {
		return err
	}
	nodeID := ""
	if *node != "" {
		n, err := c.resolve(ctx, *node)
		if err != nil {
			return err
		}
		nodeID = n.ID
	}
	return list(ctx, nodeID, *lost)
}

func sortVMs(vms []quantix.InventoryVM) {
	sort.SliceStable(vms, func(i, j int) bool {
		a, b := vms[i], vms[j]
		if a.Hostname != b.Hostname {
			return a.Hostname < b.Hostname
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.UUID < b.UUID
	})
}

func sortPools(pools []quantix.InventoryPool) {
	sort.SliceStable(pools, func(i, j int) bool {
		a, b := pools[i], pools[j]
		if a.Hostname != b.Hostname {
			return a.Hostname < b.Hostname
		}
		return a.Name < b.Name
	})
}

func (c *cli) vmsList(ctx context.Context, nodeID string, lostOnly bool) error {
	cctx, cancel := c.call(ctx)
	defer cancel()
	all, err := c.client.VMs(cctx)
	if err != nil {
		return fmt.Errorf("list vms: %w", err)
	}
	vms := []quantix.InventoryVM{}
	for _, v := range client.VMsOf(all, nodeID) {
		if !lostOnly || v.Lost {
			vms = append(vms, v)
		}
	}
	sortVMs(vms)
	if c.opts.output == "json" {
		return writeJSON(c.stdout, quantix.VMList{VMs: vms})
	}
	if len(vms) == 0 {
		c.noRows("VMs", len(all))
	}
	return c.vmTable(vms, true)
}

func (c *cli) vmTable(vms []quantix.InventoryVM, withNode bool) error {
	now := c.now()
	cols := []string{"NAME", "POWER", "VCPUS", "MEMORY", "ORIGIN", "LAST SEEN", "LOST", "UUID"}
	if withNode {
		cols = append([]string{"NODE"}, cols...)
	}
	t := newTable(c.stdout, cols...)
	for _, v := range vms {
		lost := "-"
		if v.Lost {
			lost = "lost"
			if v.LostAt != nil {
				lost += " " + ago(now, *v.LostAt)
			}
			if v.LostReason != "" {
				lost += ": " + v.LostReason
			}
		}
		cells := []string{v.Name, v.PowerState, strconv.Itoa(v.VCPUs), gib(v.MemoryBytes), v.Origin, ago(now, v.LastSeen), lost, v.UUID}
		if withNode {
			cells = append([]string{v.Hostname}, cells...)
		}
		t.row(cells...)
	}
	return t.flush()
}

func (c *cli) poolsList(ctx context.Context, nodeID string, lostOnly bool) error {
	cctx, cancel := c.call(ctx)
	defer cancel()
	all, err := c.client.Pools(cctx)
	if err != nil {
		return fmt.Errorf("list storage pools: %w", err)
	}
	pools := []quantix.InventoryPool{}
	for _, p := range client.PoolsOf(all, nodeID) {
		if !lostOnly || p.Lost {
			pools = append(pools, p)
		}
	}
	sortPools(pools)
	if c.opts.output == "json" {
		return writeJSON(c.stdout, quantix.PoolList{StoragePools: pools})
	}
	if len(pools) == 0 {
		c.noRows("storage pools", len(all))
	}
	return c.poolTable(pools, true)
}

func (c *cli) poolTable(pools []quantix.InventoryPool, withNode bool) error {
	now := c.now()
	cols := []string{"NAME", "TYPE", "STATE", "CAPACITY", "ALLOCATED", "AVAILABLE", "LAST SEEN", "LOST", "PATH"}
	if withNode {
		cols = append([]string{"NODE"}, cols...)
	}
	t := newTable(c.stdout, cols...)
	for _, p := range pools {
		lost := "-"
		if p.Lost {
			lost = "lost"
			if p.LostAt != nil {
				lost += " " + ago(now, *p.LostAt)
			}
		}
		cells := []string{p.Name, p.Type, p.State, gib(p.CapacityBytes), gib(p.AllocationBytes), gib(p.AvailableBytes), ago(now, p.LastSeen), lost, p.Path}
		if withNode {
			cells = append([]string{p.Hostname}, cells...)
		}
		t.row(cells...)
	}
	return t.flush()
}

func (c *cli) agentCA(ctx context.Context, verb string, args []string) error {
	fs := c.flagSet("ca " + verb)
	rest, err := parseFlags(fs, args, false)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("ca %s: unexpected argument %q", verb, rest[0])
	}
	if err := c.connect(); err != nil {
		return err
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	get := c.client.AgentCA
	if verb == "rotate" {
		get = c.client.RotateAgentCA
	}
	st, err := get(cctx)
	if err != nil {
		return fmt.Errorf("ca %s: %w", verb, err)
	}
	if c.opts.output == "json" {
		return writeJSON(c.stdout, st)
	}
	now := c.now()
	kv := newTable(c.stdout)
	kv.row("serving pin:", st.Serving.Pin)
	kv.row("expires:", stamp(st.Serving.NotAfter)+" ("+until(now, st.Serving.NotAfter)+")")
	if st.Next != nil {
		kv.row("next pin:", st.Next.Pin)
		kv.row("next serves from:", stamp(st.Next.ServingFrom)+" ("+until(now, st.Next.ServingFrom)+")")
	}
	kv.row("announced pins:", strings.Join(st.Pins, " "))
	kv.row("join tokens carry:", st.JoinTokenPin)
	if err := kv.flush(); err != nil {
		return err
	}
	if st.Warning != "" {
		fmt.Fprintln(c.stdout, "\nWARNING: "+st.Warning)
	}
	if st.Next != nil {
		fmt.Fprintln(c.stdout, "\nNodes online during the overlap learn the next pin; a node away past it must join again with a new token.")
	}
	return nil
}

// rotateAdminToken is `admin-token rotate`. The new token exists in clear only in
// the vDC's answer, so it is never lost: it goes into the token file qx-ctl read the
// old one from (atomically, 0600), else (or with --print) to stdout, and to stdout
// too when that file cannot be written.
func (c *cli) rotateAdminToken(ctx context.Context, args []string) error {
	fs := c.flagSet("admin-token rotate")
	show := fs.Bool("print", false, "show the new token on stdout instead of writing the token file")
	rest, err := parseFlags(fs, args, false)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("admin-token rotate: unexpected argument %q", rest[0])
	}
	if err := c.connect(); err != nil {
		return err
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	rot, err := c.client.RotateAdminToken(cctx)
	if err != nil {
		return fmt.Errorf("admin-token rotate: %w", err)
	}
	var saveErr error
	saved := ""
	if c.tokenPath != "" && !*show {
		if saveErr = quantix.WriteFileAtomic(c.tokenPath, []byte(rot.AdminToken+"\n"), 0o600); saveErr == nil {
			saved = c.tokenPath
		}
	}
	if c.opts.output == "json" {
		if err := writeJSON(c.stdout, rot); err != nil {
			return err
		}
	} else {
		kv := newTable(c.stdout)
		if saved != "" {
			kv.row("new admin token:", "written to "+saved)
		} else {
			kv.row("new admin token:", rot.AdminToken)
		}
		kv.row("generation:", strconv.FormatInt(rot.Generation, 10))
		kv.row("old token refused:", fmt.Sprintf("by every vDC within %d s", rot.PropagationSeconds))
		kv.row("ui sessions ended:", strconv.FormatInt(rot.UISessionsEnded, 10))
		if err := kv.flush(); err != nil {
			return err
		}
	}
	if saveErr != nil {
		return fmt.Errorf("admin-token rotate: the token was rotated but not saved: %w; the new token is on stdout: keep it", saveErr)
	}
	return nil
}

// tokenOutput is `tokens create -o json`: the API's join token plus the lines a node
// needs.
type tokenOutput struct {
	quantix.JoinToken
	KernelCmdline string `json:"kernel_cmdline"`
	AgentTOML     string `json:"agent_toml"`
}

func (c *cli) tokensCreate(ctx context.Context, args []string) error {
	fs := c.flagSet("tokens create")
	ttl := fs.Duration("ttl", 24*time.Hour, "the token expires after `duration`")
	uses := fs.Int("uses", 1, "`number` of registrations the token allows")
	desc := fs.String("description", "", "free `text` shown with the token")
	nodeURL := fs.String("node-url", "", "the vDC `URL` as nodes reach it (default: --url)")
	rest, err := parseFlags(fs, args, false)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("tokens create: unexpected argument %q", rest[0])
	}
	switch {
	case *ttl < time.Second:
		return usagef("tokens create: --ttl %s: want at least 1s", *ttl)
	case *ttl%time.Second != 0:
		return usagef("tokens create: --ttl %s: want whole seconds", *ttl)
	case *uses < 1:
		return usagef("tokens create: --uses %d: want 1 or more", *uses)
	}
	if err := c.connect(); err != nil {
		return err
	}
	forNodes := c.client.URL()
	if *nodeURL != "" {
		if forNodes, err = client.ParseURL(*nodeURL); err != nil {
			return usagef("tokens create: --node-url: %v", err)
		}
	}
	// The agent port speaks TLS too; agents refuse plain HTTP.
	if p, ok := strings.CutPrefix(forNodes, "http://"); ok {
		forNodes = "https://" + p
	}
	if strings.ContainsAny(forNodes, " \t\"") {
		return usagef("tokens create: vDC URL %q holds white space or quotes; the kernel command line cannot carry it", forNodes)
	}
	if u, err := url.Parse(forNodes); err == nil {
		if ip := net.ParseIP(u.Hostname()); (ip != nil && ip.IsLoopback()) || u.Hostname() == "localhost" {
			fmt.Fprintf(c.stderr, "qx-ctl: note: %s is a loopback address nodes cannot reach; pass --node-url with the vDC address nodes use\n", forNodes)
		}
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	tok, err := c.client.CreateJoinToken(cctx, quantix.JoinTokenRequest{
		TTLSeconds: int(*ttl / time.Second), Uses: *uses, Description: *desc})
	if err != nil {
		return fmt.Errorf("create join token: %w", err)
	}
	out := tokenOutput{JoinToken: tok,
		KernelCmdline: quantix.ParamVDC + "=" + forNodes + " " + quantix.ParamToken + "=" + tok.Token}
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(struct {
		ControlPlane string `toml:"control_plane"`
		JoinToken    string `toml:"join_token"`
	}{forNodes, tok.Token}); err != nil {
		return fmt.Errorf("encode agent.toml lines: %w", err)
	}
	out.AgentTOML = b.String()
	if c.opts.output == "json" {
		return writeJSON(c.stdout, out)
	}
	now := c.now()
	kv := newTable(c.stdout)
	kv.row("join token:", tok.Token)
	kv.row("id:", tok.ID)
	kv.row("expires:", stamp(tok.ExpiresAt)+" ("+until(now, tok.ExpiresAt)+")")
	kv.row("uses left:", strconv.Itoa(tok.UsesLeft))
	if tok.Description != "" {
		kv.row("description:", tok.Description)
	}
	if err := kv.flush(); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "\nKernel command line of a Quantix-OS node (append to the boot line):\n%s\n", out.KernelCmdline)
	fmt.Fprintf(c.stdout, "\nOr in %s:\n%s", quantix.AgentConfig, out.AgentTOML)
	fmt.Fprintln(c.stdout, "\nThe vDC keeps only a hash of the token: it is shown this once.")
	return nil
}
