package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/client"
)

// This file is `qx-ctl releases` and `qx-ctl upgrades` (docs/design.md §16): the
// release library and rolling upgrades of the nodes.

func (c *cli) releases(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usagef("releases: want upload, list, show or delete")
	}
	switch args[0] {
	case "upload":
		return c.releasesUpload(ctx, args[1:])
	case "list", "ls":
		return c.releasesList(ctx, args[1:])
	case "show", "get":
		return c.releasesShow(ctx, args[1:])
	case "delete", "rm":
		return c.releasesDelete(ctx, args[1:])
	}
	return usagef("releases: unknown subcommand %q (want upload, list, show or delete)", args[0])
}

func (c *cli) releasesUpload(ctx context.Context, args []string) error {
	fs := c.flagSet("releases upload")
	rest, err := c.nodeArgs(fs, args, "releases upload", 1, "the bundle folder (<image>.iso, <image>.manifest.json, SHA256SUMS, SHA256SUMS.sig)")
	if err != nil {
		return err
	}
	b, err := client.OpenBundle(rest[0])
	if err != nil {
		return fmt.Errorf("releases upload: %w", err)
	}
	defer b.Close()
	if err := c.connect(); err != nil {
		return err
	}
	p := &progress{w: c.stderr, r: b.Body, name: filepath.Base(filepath.Clean(rest[0])), total: b.Size}
	// As an image upload: as long as it takes, until interrupted.
	rel, err := c.client.UploadRelease(ctx, b, p)
	fmt.Fprintln(c.stderr)
	if err != nil {
		return fmt.Errorf("upload release %s: %w", rest[0], err)
	}
	return c.showRelease(rel)
}

func (c *cli) showRelease(r quantix.Release) error {
	if c.opts.output == "json" {
		return writeJSON(c.stdout, r)
	}
	fmt.Fprintf(c.stdout, "release:   %s\nimage:     %s\nversion:   %s\nsigned by: %s\ncreated:   %s\n",
		r.ID, r.Image, r.Version, r.SignedBy, stamp(r.CreatedAt))
	for _, f := range r.Files {
		fmt.Fprintf(c.stdout, "  %-28s %10s  sha256 %s\n", f.Name, quantix.FormatBytes(f.SizeBytes), f.SHA256)
	}
	return nil
}

func (c *cli) releasesList(ctx context.Context, args []string) error {
	fs := c.flagSet("releases list")
	_, cctx, cancel, err := c.begin(ctx, fs, args, "releases list", 0, "")
	if err != nil {
		return err
	}
	defer cancel()
	rs, err := c.client.Releases(cctx)
	if err != nil {
		return fmt.Errorf("list releases: %w", err)
	}
	if c.opts.output == "json" {
		return writeJSON(c.stdout, quantix.ReleaseList{Releases: rs})
	}
	if len(rs) == 0 {
		c.noRows("releases", 0)
	}
	t := newTable(c.stdout, "IMAGE", "VERSION", "SIGNED BY", "SIZE", "CREATED", "ID")
	for _, r := range rs {
		var size int64
		for _, f := range r.Files {
			size += f.SizeBytes
		}
		t.row(r.Image, r.Version, r.SignedBy, quantix.FormatBytes(size), stamp(r.CreatedAt), r.ID)
	}
	return t.flush()
}

// refCommand runs a command of one argument: it asks the vDC with get and shows
// the answer.
func refCommand[T any](ctx context.Context, c *cli, args []string, name, what string,
	get func(*client.Client, context.Context, string) (T, error), show func(T) error) error {
	rest, cctx, cancel, err := c.begin(ctx, c.flagSet(name), args, name, 1, what)
	if err != nil {
		return err
	}
	defer cancel()
	v, err := get(c.client, cctx, rest[0])
	if err != nil {
		return fmt.Errorf("%s %s: %w", name, rest[0], err)
	}
	return show(v)
}

func (c *cli) releasesShow(ctx context.Context, args []string) error {
	return refCommand(ctx, c, args, "releases show", "the release (id or <image>-<version>)", (*client.Client).Release, c.showRelease)
}

func (c *cli) releasesDelete(ctx context.Context, args []string) error {
	fs := c.flagSet("releases delete")
	rest, cctx, cancel, err := c.begin(ctx, fs, args, "releases delete", 1, "the release (id or <image>-<version>)")
	if err != nil {
		return err
	}
	defer cancel()
	if err := c.client.DeleteRelease(cctx, rest[0]); err != nil {
		return fmt.Errorf("delete release %s: %w", rest[0], err)
	}
	fmt.Fprintf(c.stdout, "deleted release %s\n", rest[0])
	return nil
}

func (c *cli) upgrades(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usagef("upgrades: want start, list, show or cancel")
	}
	switch args[0] {
	case "start":
		return c.upgradesStart(ctx, args[1:])
	case "list", "ls":
		return c.upgradesList(ctx, args[1:])
	case "show", "get":
		return c.upgradesShow(ctx, args[1:])
	case "cancel":
		return c.upgradesCancel(ctx, args[1:])
	}
	return usagef("upgrades: unknown subcommand %q (want start, list, show or cancel)", args[0])
}

func (c *cli) upgradesStart(ctx context.Context, args []string) error {
	fs := c.flagSet("upgrades start")
	release := fs.String("release", "", "the release (`id or <image>-<version>`)")
	var nodes listFlag
	fs.Var(&nodes, "node", "a node to upgrade (`id or hostname`), in order; repeatable")
	all := fs.Bool("all", false, "upgrade every node, by hostname")
	stageOnly := fs.Bool("stage-only", false, "stage the release on each node without rebooting it")
	wait := fs.Bool("wait", false, "wait until the upgrade has finished")
	waitTimeout := fs.Duration("wait-timeout", time.Hour, "give up waiting after this long")
	if _, err := c.nodeArgs(fs, args, "upgrades start", 0, ""); err != nil {
		return err
	}
	switch {
	case *release == "":
		return usagef("upgrades start: missing --release")
	case *all == (len(nodes) > 0):
		return usagef("upgrades start: give --node (one or more) or --all")
	}
	if err := c.connect(); err != nil {
		return err
	}
	activate := !*stageOnly
	cctx, cancel := c.call(ctx)
	defer cancel()
	u, err := c.client.StartUpgrade(cctx, quantix.UpgradeRequest{Release: *release, Nodes: nodes, All: *all, Activate: &activate})
	if err != nil {
		return fmt.Errorf("start upgrade to %s: %w", *release, err)
	}
	fmt.Fprintf(c.stderr, "started upgrade %s: %s %s on %s\n", u.ID, u.Image, u.Version, plural(len(u.Nodes), "node"))
	if *wait {
		if u, err = c.awaitUpgrade(ctx, u.ID, *waitTimeout); err != nil {
			if c.opts.output != "json" {
				c.showUpgrade(u)
			}
			return err
		}
	}
	return c.showUpgrade(u)
}

// awaitUpgrade polls until the upgrade has finished; failed or cancelled is an
// error (exit 1), the timeout exit 5, as vms --wait.
func (c *cli) awaitUpgrade(ctx context.Context, id string, timeout time.Duration) (quantix.Upgrade, error) {
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		cctx, cancel := c.call(ctx)
		u, err := c.client.Upgrade(cctx, id)
		cancel()
		if err != nil {
			return u, fmt.Errorf("wait for upgrade %s: %w", id, err)
		}
		if s := upgradeProgress(u); s != last {
			fmt.Fprintf(c.stderr, "upgrade %s: %s\n", id, s)
			last = s
		}
		switch u.State {
		case quantix.UpgradeSucceeded:
			return u, nil
		case quantix.UpgradeFailed, quantix.UpgradeCancelled:
			return u, fmt.Errorf("upgrade %s %s: %s", id, u.State, u.Reason)
		}
		if time.Now().After(deadline) {
			return u, fmt.Errorf("upgrade %s still running (%s) after %s: %w", id, last, timeout, context.DeadlineExceeded)
		}
		select {
		case <-ctx.Done():
			return u, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// upgradeProgress is one line: the state and each node's phase.
func upgradeProgress(u quantix.Upgrade) string {
	parts := make([]string, len(u.Nodes))
	for i, n := range u.Nodes {
		parts[i] = n.Hostname + " " + n.Phase
	}
	return u.State + ": " + strings.Join(parts, ", ")
}

func (c *cli) showUpgrade(u quantix.Upgrade) error {
	if c.opts.output == "json" {
		return writeJSON(c.stdout, u)
	}
	w := c.stdout
	fmt.Fprintf(w, "upgrade:  %s\nrelease:  %s %s (%s)\nactivate: %v\nstate:    %s\n", u.ID, u.Image, u.Version, u.Release, u.Activate, u.State)
	if u.Reason != "" {
		fmt.Fprintf(w, "reason:   %s\n", u.Reason)
	}
	fmt.Fprintf(w, "started:  %s\n", stamp(u.CreatedAt))
	if u.FinishedAt != nil {
		fmt.Fprintf(w, "finished: %s\n", stamp(*u.FinishedAt))
	}
	t := newTable(w, "NODE", "FROM", "PHASE", "STARTED", "FINISHED", "ERROR")
	for _, n := range u.Nodes {
		t.row(n.Hostname, n.FromVersion, n.Phase, optStamp(n.StartedAt), optStamp(n.FinishedAt), n.Error)
	}
	return t.flush()
}

func optStamp(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return stamp(*t)
}

func (c *cli) upgradesList(ctx context.Context, args []string) error {
	fs := c.flagSet("upgrades list")
	_, cctx, cancel, err := c.begin(ctx, fs, args, "upgrades list", 0, "")
	if err != nil {
		return err
	}
	defer cancel()
	us, err := c.client.Upgrades(cctx)
	if err != nil {
		return fmt.Errorf("list upgrades: %w", err)
	}
	if c.opts.output == "json" {
		return writeJSON(c.stdout, quantix.UpgradeList{Upgrades: us})
	}
	if len(us) == 0 {
		c.noRows("upgrades", 0)
	}
	t := newTable(c.stdout, "ID", "IMAGE", "VERSION", "STATE", "NODES", "STARTED", "REASON")
	for _, u := range us {
		done := 0
		for _, n := range u.Nodes {
			if n.Phase == quantix.UpgradeNodeDone || n.Phase == quantix.UpgradeNodeSkipped {
				done++
			}
		}
		t.row(u.ID, u.Image, u.Version, u.State, fmt.Sprintf("%d/%d", done, len(u.Nodes)), stamp(u.CreatedAt), u.Reason)
	}
	return t.flush()
}

func (c *cli) upgradesShow(ctx context.Context, args []string) error {
	return refCommand(ctx, c, args, "upgrades show", "the upgrade id", (*client.Client).Upgrade, c.showUpgrade)
}

func (c *cli) upgradesCancel(ctx context.Context, args []string) error {
	return refCommand(ctx, c, args, "upgrades cancel", "the upgrade id", (*client.Client).CancelUpgrade, c.showUpgrade)
}
