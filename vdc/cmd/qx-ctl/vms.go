package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/quantix/quantix"
)

// This file holds the managed-VM and image commands (docs/design.md §14).

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// parseSize reads 512M, 4G, 4GiB, 1T or a number of bytes (binary units).
func parseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "IB"), "B")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f <= 0 {
		return 0, fmt.Errorf("%q is not a size like 512M, 4G or 4GiB", s)
	}
	return int64(f * float64(mult)), nil
}

// begin parses a subcommand's flags and its want arguments, connects to the vDC
// and bounds the call with --timeout.
func (c *cli) begin(ctx context.Context, fs *flag.FlagSet, args []string, name string, want int, what string) (
	[]string, context.Context, context.CancelFunc, error) {
	rest, err := c.nodeArgs(fs, args, name, want, what)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := c.connect(); err != nil {
		return nil, nil, nil, err
	}
	cctx, cancel := c.call(ctx)
	return rest, cctx, cancel, nil
}

func (c *cli) vms(ctx context.Context, args []string) error {
	sub, rest := args[0], args[1:]
	switch sub {
	case "create":
		return c.vmsCreate(ctx, rest)
	case "show", "get":
		return c.vmsShow(ctx, rest)
	case quantix.VMActionStart, quantix.VMActionStop, quantix.VMActionForceOff, quantix.VMActionReboot:
		return c.vmsAction(ctx, sub, rest)
	case "delete", "rm":
		return c.vmsDelete(ctx, rest)
	case "console":
		return c.vmsConsole(ctx, rest)
	}
	return usagef("vms: unknown subcommand %q (want list, create, show, start, stop, force-off, reboot, delete or console)", sub)
}

func (c *cli) vmsCreate(ctx context.Context, args []string) error {
	fs := c.flagSet("vms create")
	vcpus := fs.Int("vcpus", 1, "virtual CPUs")
	memory := fs.String("memory", "1G", "memory `size` (512M, 4G)")
	var disks, nics listFlag
	fs.Var(&disks, "disk", "a disk: a blank `size` (10G) or a copy of image:ID[:size]; repeatable")
	cdrom := fs.String("cdrom", "", "an ISO `image id` attached as CD-ROM")
	fs.Var(&nics, "nic", "a NIC on `network` (management); repeatable; default one")
	firmware := fs.String("firmware", "", "bios (default) or uefi")
	boot := fs.String("boot", "", "boot `order`, e.g. disk,cdrom,network")
	node := fs.String("node", "", "run it on this node (`id or hostname`); default: the vDC places it")
	stopped := fs.Bool("stopped", false, "create it stopped")
	wait := fs.Bool("wait", false, "wait until its node observes it in the wanted state")
	waitTimeout := fs.Duration("wait-timeout", 5*time.Minute, "give up waiting after this long")
	rest, err := c.nodeArgs(fs, args, "vms create", 1, "the VM's name")
	if err != nil {
		return err
	}
	mem, err := parseSize(*memory)
	if err != nil {
		return usagef("vms create: --memory %v", err)
	}
	req := quantix.VMCreate{VMSpec: quantix.VMSpec{Name: rest[0], VCPUs: *vcpus, MemoryBytes: mem, CDROM: *cdrom, Firmware: *firmware}, Node: *node}
	for _, d := range disks {
		var ds quantix.DiskSpec
		if img, ok := strings.CutPrefix(d, "image:"); ok {
			id, size, hasSize := strings.Cut(img, ":")
			ds.ImageID = id
			if hasSize {
				if ds.SizeBytes, err = parseSize(size); err != nil {
					return usagef("vms create: --disk %s: %v", d, err)
				}
			}
		} else if ds.SizeBytes, err = parseSize(d); err != nil {
			return usagef("vms create: --disk %v", err)
		}
		req.Disks = append(req.Disks, ds)
	}
	if len(nics) == 0 {
		nics = listFlag{quantix.NetworkManagement}
	}
	for _, n := range nics {
		req.NICs = append(req.NICs, quantix.NICSpec{Network: n})
	}
	if *boot != "" {
		req.BootOrder = strings.Split(*boot, ",")
	}
	if *stopped {
		req.Power = quantix.WantedStopped
	}
	if err := c.connect(); err != nil {
		return err
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	vm, err := c.client.CreateVM(cctx, req)
	if err != nil {
		return fmt.Errorf("create vm %s: %w", req.Name, err)
	}
	fmt.Fprintf(c.stderr, "created vm %s (%s) on %s, wanted %s\n", vm.Name, vm.UUID, vm.Hostname, vm.Wanted)
	if *wait {
		if vm, err = c.awaitConverged(ctx, vm.UUID, *waitTimeout); err != nil {
			return err
		}
	}
	return c.showVM(vm, nil)
}

// awaitConverged polls until the VM's node observes the wanted state.
func (c *cli) awaitConverged(ctx context.Context, ref string, timeout time.Duration) (quantix.ManagedVM, error) {
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		cctx, cancel := c.call(ctx)
		vm, err := c.client.VM(cctx, ref)
		cancel()
		if err != nil {
			return vm, fmt.Errorf("wait for vm %s: %w", ref, err)
		}
		if vm.Converged() {
			return vm, nil
		}
		if s := vm.Observed + " " + vm.Error; s != last {
			fmt.Fprintf(c.stderr, "vm %s: wanted %s, observed %s %s\n", vm.Name, vm.Wanted, vm.Observed, vm.Error)
			last = s
		}
		if vm.Observed == quantix.ObservedError {
			return vm, fmt.Errorf("vm %s: its node reports an error: %s", vm.Name, vm.Error)
		}
		if time.Now().After(deadline) {
			return vm, fmt.Errorf("vm %s: still %s (wanted %s) after %s: %w", vm.Name, vm.Observed, vm.Wanted, timeout, context.DeadlineExceeded)
		}
		select {
		case <-ctx.Done():
			return vm, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (c *cli) vmsManaged(ctx context.Context, args []string) error {
	fs := c.flagSet("vms list --managed")
	_, cctx, cancel, err := c.begin(ctx, fs, args, "vms list --managed", 0, "")
	if err != nil {
		return err
	}
	defer cancel()
	vms, err := c.client.ManagedVMs(cctx)
	if err != nil {
		return fmt.Errorf("list managed vms: %w", err)
	}
	if c.opts.output == "json" {
		return writeJSON(c.stdout, quantix.VMList{VMs: []quantix.InventoryVM{}, Managed: vms})
	}
	if len(vms) == 0 {
		c.noRows("managed VMs", 0)
	}
	t := newTable(c.stdout, "NAME", "WANTED", "OBSERVED", "NODE", "VCPUS", "MEMORY", "GENERATION", "UUID")
	for _, v := range vms {
		obs := v.Observed
		if v.Error != "" {
			obs += ": " + v.Error
		}
		t.row(v.Name, v.Wanted, obs, v.Hostname, strconv.Itoa(v.Spec.VCPUs), quantix.FormatBytes(v.Spec.MemoryBytes),
			fmt.Sprintf("%d/%d", v.AppliedGeneration, v.Generation), v.UUID)
	}
	return t.flush()
}

func (c *cli) vmsShow(ctx context.Context, args []string) error {
	fs := c.flagSet("vms show")
	rest, cctx, cancel, err := c.begin(ctx, fs, args, "vms show", 1, "the VM (name or uuid)")
	if err != nil {
		return err
	}
	defer cancel()
	vm, err := c.client.VM(cctx, rest[0])
	if err != nil {
		return fmt.Errorf("vm %s: %w", rest[0], err)
	}
	evs, err := c.client.VMEvents(cctx, vm.UUID)
	if err != nil {
		return fmt.Errorf("vm %s events: %w", rest[0], err)
	}
	return c.showVM(vm, evs)
}

func (c *cli) showVM(vm quantix.ManagedVM, evs []quantix.VMEvent) error {
	if c.opts.output == "json" {
		return writeJSON(c.stdout, vm)
	}
	w := c.stdout
	fmt.Fprintf(w, "name:        %s\nuuid:        %s\nnode:        %s (%s)\n", vm.Name, vm.UUID, vm.Hostname, vm.NodeID)
	obs := vm.Observed
	if vm.Error != "" {
		obs += ": " + vm.Error
	}
	fmt.Fprintf(w, "wanted:      %s\nobserved:    %s\ngeneration:  %d (node applied %d)\n", vm.Wanted, obs, vm.Generation, vm.AppliedGeneration)
	s := vm.Spec
	fmt.Fprintf(w, "vcpus:       %d\nmemory:      %s\n", s.VCPUs, quantix.FormatBytes(s.MemoryBytes))
	for i, d := range s.Disks {
		what := "blank"
		if d.ImageID != "" {
			what = "copy of image " + d.ImageID
		}
		size := "image size"
		if d.SizeBytes > 0 {
			size = quantix.FormatBytes(d.SizeBytes)
		}
		fmt.Fprintf(w, "disk %d:      %s, %s\n", i, size, what)
	}
	if s.CDROM != "" {
		fmt.Fprintf(w, "cdrom:       image %s\n", s.CDROM)
	}
	for i, n := range s.NICs {
		fmt.Fprintf(w, "nic %d:       %s %s\n", i, n.Network, n.MAC)
	}
	for _, e := range evs {
		fmt.Fprintf(w, "  %s  %-8s %s\n", stamp(e.At), e.Kind, e.Message)
	}
	return nil
}

func (c *cli) vmsAction(ctx context.Context, action string, args []string) error {
	fs := c.flagSet("vms " + action)
	wait := fs.Bool("wait", false, "wait until its node observes the wanted state")
	waitTimeout := fs.Duration("wait-timeout", 5*time.Minute, "give up waiting after this long")
	rest, err := c.nodeArgs(fs, args, "vms "+action, 1, "the VM (name or uuid)")
	if err != nil {
		return err
	}
	if err := c.connect(); err != nil {
		return err
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	vm, err := c.client.VMAction(cctx, rest[0], action)
	if err != nil {
		return fmt.Errorf("vm %s %s: %w", rest[0], action, err)
	}
	if *wait {
		// A reboot is done once the node applied it and the VM runs again.
		if vm, err = c.awaitConverged(ctx, vm.UUID, *waitTimeout); err != nil {
			return err
		}
	}
	if c.opts.output == "json" {
		return writeJSON(c.stdout, vm)
	}
	fmt.Fprintf(c.stdout, "vm %s: %s, wanted %s, observed %s\n", vm.Name, action, vm.Wanted, vm.Observed)
	return nil
}

func (c *cli) vmsDelete(ctx context.Context, args []string) error {
	fs := c.flagSet("vms delete")
	keep := fs.Bool("keep-disks", false, "keep its disks in the node's pool")
	yes := fs.Bool("yes", false, "delete without asking")
	fs.BoolVar(yes, "y", false, "delete without asking")
	rest, err := c.nodeArgs(fs, args, "vms delete", 1, "the VM (name or uuid)")
	if err != nil {
		return err
	}
	if err := c.connect(); err != nil {
		return err
	}
	if !*yes {
		if !isTerminal(c.stdin) {
			return usagef("vms delete: refusing to delete vm %s without --yes: stdin is not a terminal to ask on", rest[0])
		}
		ok, err := c.confirm(ctx, fmt.Sprintf("Delete vm %s (disks kept: %v)? [y/N] ", rest[0], *keep))
		if err != nil || !ok {
			return fmt.Errorf("vms delete: not confirmed; vm %s kept", rest[0])
		}
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	if err := c.client.DeleteVM(cctx, rest[0], *keep); err != nil {
		return fmt.Errorf("delete vm %s: %w", rest[0], err)
	}
	fmt.Fprintf(c.stdout, "deleted vm %s\n", rest[0])
	return nil
}

func (c *cli) vmsConsole(ctx context.Context, args []string) error {
	fs := c.flagSet("vms console")
	rest, cctx, cancel, err := c.begin(ctx, fs, args, "vms console", 1, "the VM (name or uuid)")
	if err != nil {
		return err
	}
	defer cancel()
	out, err := c.client.VMConsole(cctx, rest[0])
	if err != nil {
		return fmt.Errorf("vm %s console: %w", rest[0], err)
	}
	_, err = c.stdout.Write(out)
	return err
}

func (c *cli) images(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usagef("images: want upload, list or delete")
	}
	switch args[0] {
	case "upload":
		return c.imagesUpload(ctx, args[1:])
	case "list", "ls":
		return c.imagesList(ctx, args[1:])
	case "delete", "rm":
		return c.imagesDelete(ctx, args[1:])
	}
	return usagef("images: unknown subcommand %q (want upload, list or delete)", args[0])
}

// formatOf guesses an image format from a file name.
func formatOf(path string) string {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".iso":
		return quantix.ImageISO
	case ".qcow2":
		return quantix.ImageQCOW2
	}
	return quantix.ImageRaw
}

// progress writes a progress bar for an upload to w, at most every 200 ms.
type progress struct {
	w     io.Writer
	r     io.Reader
	name  string
	total int64
	done  int64
	last  time.Time
}

func (p *progress) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += int64(n)
	if now := time.Now(); now.Sub(p.last) > 200*time.Millisecond || err == io.EOF {
		p.last = now
		const width = 30
		fill := int(width * p.done / max(p.total, 1))
		fmt.Fprintf(p.w, "\r%s [%s%s] %3d%% %s / %s", p.name, strings.Repeat("#", fill), strings.Repeat(" ", width-fill),
			100*p.done/max(p.total, 1), quantix.FormatBytes(p.done), quantix.FormatBytes(p.total))
	}
	return n, err
}

func (c *cli) imagesUpload(ctx context.Context, args []string) error {
	fs := c.flagSet("images upload")
	name := fs.String("name", "", "the image's name (default: the file name)")
	format := fs.String("format", "", "raw, qcow2 or iso (default: from the file name)")
	rest, err := c.nodeArgs(fs, args, "images upload", 1, "the image file")
	if err != nil {
		return err
	}
	path := rest[0]
	if *name == "" {
		*name = filepath.Base(path)
	}
	if *format == "" {
		*format = formatOf(path)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("images upload: %w", err)
	}
	defer f.Close()
	// The sum first, so that the vDC refuses bytes damaged on the way.
	h := sha256.New()
	size, err := io.Copy(h, f)
	if err != nil {
		return fmt.Errorf("images upload: read %s: %w", path, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("images upload: %w", err)
	}
	if err := c.connect(); err != nil {
		return err
	}
	p := &progress{w: c.stderr, r: f, name: *name, total: size}
	// Uploads take as long as they take: --timeout bounds the wait for an answer
	// only through the context of the caller's interrupt.
	img, err := c.client.UploadImage(ctx, *name, *format, hex.EncodeToString(h.Sum(nil)), size, p)
	fmt.Fprintln(c.stderr)
	if err != nil {
		return fmt.Errorf("upload image %s: %w", *name, err)
	}
	if c.opts.output == "json" {
		return writeJSON(c.stdout, img)
	}
	fmt.Fprintf(c.stdout, "uploaded image %s (%s): %s, %s, sha256 %s\n", img.Name, img.ID, img.Format, quantix.FormatBytes(img.SizeBytes), img.SHA256)
	return nil
}

func (c *cli) imagesList(ctx context.Context, args []string) error {
	fs := c.flagSet("images list")
	_, cctx, cancel, err := c.begin(ctx, fs, args, "images list", 0, "")
	if err != nil {
		return err
	}
	defer cancel()
	imgs, err := c.client.Images(cctx)
	if err != nil {
		return fmt.Errorf("list images: %w", err)
	}
	if c.opts.output == "json" {
		return writeJSON(c.stdout, quantix.ImageList{Images: imgs})
	}
	if len(imgs) == 0 {
		c.noRows("images", 0)
	}
	t := newTable(c.stdout, "NAME", "FORMAT", "SIZE", "USED BY", "CREATED", "SHA256", "ID")
	for _, i := range imgs {
		t.row(i.Name, i.Format, quantix.FormatBytes(i.SizeBytes), plural(i.UsedBy, "VM"), i.CreatedAt, i.SHA256[:16]+"...", i.ID)
	}
	return t.flush()
}

func (c *cli) imagesDelete(ctx context.Context, args []string) error {
	fs := c.flagSet("images delete")
	rest, cctx, cancel, err := c.begin(ctx, fs, args, "images delete", 1, "the image (id or name)")
	if err != nil {
		return err
	}
	defer cancel()
	if err := c.client.DeleteImage(cctx, rest[0]); err != nil {
		return fmt.Errorf("delete image %s: %w", rest[0], err)
	}
	fmt.Fprintf(c.stdout, "deleted image %s\n", rest[0])
	return nil
}
