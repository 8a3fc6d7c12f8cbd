package main

import (
	"context"
	"fmt"

	"github.com/quantix/quantix"
)

// This file is `qx-ctl controller` (upgrades.go in the root package): the
// operating system of the vDC appliance that answers, and its own upgrade.

func (c *cli) controller(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usagef("controller: want show or upgrade")
	}
	switch args[0] {
	case "show", "get":
		return c.controllerShow(ctx, args[1:])
	case "upgrade":
		return c.controllerUpgrade(ctx, args[1:])
	}
	return usagef("controller: unknown subcommand %q (want show or upgrade)", args[0])
}

func (c *cli) controllerShow(ctx context.Context, args []string) error {
	_, cctx, cancel, err := c.begin(ctx, c.flagSet("controller show"), args, "controller show", 0, "")
	if err != nil {
		return err
	}
	defer cancel()
	o, err := c.client.Controller(cctx)
	if err != nil {
		return fmt.Errorf("controller show: %w", err)
	}
	if c.opts.output == "json" {
		return writeJSON(c.stdout, o)
	}
	w := c.stdout
	image := o.Image
	if image == "" {
		image = "qx-vdc"
	}
	fmt.Fprintf(w, "vdc:     %s\nrelease: %s %s\n", o.Hostname, image, o.Version)
	if o.Slots == nil {
		fmt.Fprintf(w, "slots:   none: %s\n", o.Unavailable)
	} else {
		o.Slots.Write(w)
	}
	if len(o.Events) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	t := newTable(w, "AT", "EVENT", "MESSAGE")
	for _, e := range o.Events {
		t.row(stamp(e.At), e.Kind, e.Message)
	}
	return t.flush()
}

func (c *cli) controllerUpgrade(ctx context.Context, args []string) error {
	fs := c.flagSet("controller upgrade")
	activate := fs.Bool("activate", false, "reboot the vDC into the release once staged (else it boots at the next reboot)")
	rest, cctx, cancel, err := c.begin(ctx, fs, args, "controller upgrade", 1, "the release (id or qvdc-<version>)")
	if err != nil {
		return err
	}
	defer cancel()
	u, err := c.client.UpgradeController(cctx, quantix.ControllerUpgradeRequest{Release: rest[0], Activate: *activate})
	if err != nil {
		return fmt.Errorf("upgrade the vDC to %s: %w", rest[0], err)
	}
	if c.opts.output == "json" {
		return writeJSON(c.stdout, u)
	}
	fmt.Fprintf(c.stdout, "staged %s %s (signed by %s) into slot %s in %.1f s\n", u.Staged.Image, u.Staged.Version, u.Staged.SignedBy, u.Staged.Slot, u.Staged.Seconds)
	if u.Rebooting {
		fmt.Fprintln(c.stdout, "the vDC reboots into it now, as a trial: it falls back to the running release if the trial fails (qx-ctl controller show)")
	} else {
		fmt.Fprintln(c.stdout, "it boots at the vDC's next reboot, as a trial (or now: qx-ctl controller upgrade --activate "+rest[0]+")")
	}
	return nil
}
