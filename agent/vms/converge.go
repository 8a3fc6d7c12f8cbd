package vms

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/google/uuid"

	"github.com/quantix/quantix"
)

// apply converges libvirt to d, one VM at a time; one VM's failure is recorded as
// its error and does not stop the others. The applied generation moves to d's once
// every VM has been acted on (a stop waiting for its timeout counts as acted on).
func (r *Reconciler) apply(ctx context.Context, lv *libvirt.Libvirt, node string, d quantix.NodeDesired) {
	images := map[string]quantix.DesiredImage{}
	for _, img := range d.Images {
		images[img.ID] = img
	}
	errs := map[string]vmError{}
	wanted := map[string]bool{}
	consoles := map[string]bool{}
	for _, vm := range d.VMs {
		if ctx.Err() != nil {
			return
		}
		wanted[strings.ToLower(vm.UUID)] = true
		err := r.convergeVM(ctx, lv, node, vm, images)
		if err != nil {
			errs[strings.ToLower(vm.UUID)] = vmError{name: vm.Spec.Name, reason: err.Error()}
			r.log.Warn("vm not converged", "vm", vm.UUID, "name", vm.Spec.Name, "err", err)
		}
		consoles[strings.ToLower(vm.UUID)] = true
	}
	for _, del := range d.Deleted {
		if err := r.deleteVM(lv, del); err != nil {
			errs[strings.ToLower(del.UUID)] = vmError{reason: err.Error()}
			r.log.Warn("vm not deleted", "vm", del.UUID, "err", err)
		}
		wanted[strings.ToLower(del.UUID)] = true
	}
	r.noteLeftAlone(lv, wanted)
	for id := range r.stopping {
		if !wanted[id] {
			delete(r.stopping, id)
		}
	}

	r.mu.Lock()
	changed := r.applied != d.Generation || !sameErrors(r.errs, errs)
	r.applied = d.Generation
	r.errs = errs
	for id := range r.consoles {
		if !consoles[id] {
			delete(r.consoles, id)
		}
	}
	for id := range consoles {
		if r.consoles[id] == nil {
			r.consoles[id] = &consoleTail{path: r.layout().ConsolePath(id)}
		}
	}
	r.mu.Unlock()
	if changed {
		r.log.Info("applied desired vms", "generation", d.Generation, "vms", len(d.VMs), "deleted", len(d.Deleted), "errors", len(errs))
		r.notify()
	}
}

func sameErrors(a, b map[string]vmError) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func (r *Reconciler) layout() Layout {
	t := "qemu"
	if r.cfg.Accelerator() == quantix.AccelKVM {
		t = "kvm"
	}
	return Layout{Pool: r.cfg.Pool, ImagesDir: r.cfg.ImagesDir, ConsoleDir: r.cfg.ConsoleDir, Bridge: r.cfg.Bridge, DomainType: t}
}

func isLibvirtErr(err error, code libvirt.ErrorNumber) bool {
	var le libvirt.Error
	return errors.As(err, &le) && le.Code == uint32(code)
}

// lookup finds a domain by UUID: its metadata (ok false when unmanaged) and state.
type found struct {
	dom     libvirt.Domain
	managed bool
	meta    Metadata
	state   libvirt.DomainState
}

func lookup(lv *libvirt.Libvirt, id string) (*found, error) {
	u, err := uuid.Parse(id)
	if err != nil {
		return nil, fmt.Errorf("vm %q: not a UUID: %w", id, err)
	}
	dom, err := lv.DomainLookupByUUID(libvirt.UUID(u))
	if isLibvirtErr(err, libvirt.ErrNoDomain) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up domain %s: %w", id, err)
	}
	// The persistent definition holds what was applied last; a running domain's
	// live XML still shows what it was started with.
	x, err := lv.DomainGetXMLDesc(dom, libvirt.DomainXMLInactive)
	if err != nil {
		return nil, fmt.Errorf("domain %s xml: %w", id, err)
	}
	meta, managed, err := ParseMetadata(x)
	if err != nil {
		return nil, fmt.Errorf("domain %s: %w", id, err)
	}
	st, _, err := lv.DomainGetState(dom, 0)
	if err != nil {
		return nil, fmt.Errorf("domain %s state: %w", id, err)
	}
	return &found{dom: dom, managed: managed, meta: meta, state: libvirt.DomainState(st)}, nil
}

func (f *found) active() bool {
	switch f.state {
	case libvirt.DomainRunning, libvirt.DomainBlocked, libvirt.DomainPaused, libvirt.DomainShutdown, libvirt.DomainPmsuspended:
		return true
	}
	return false
}

// convergeVM brings one domain to what vm says: defined from its spec (disks
// created first), autostart mirroring the wanted power, then the power state.
func (r *Reconciler) convergeVM(ctx context.Context, lv *libvirt.Libvirt, node string, vm quantix.DesiredVM, images map[string]quantix.DesiredImage) error {
	id := strings.ToLower(vm.UUID)
	f, err := lookup(lv, id)
	if err != nil {
		return err
	}
	if f != nil && !f.managed {
		return fmt.Errorf("domain %s (%s) exists on this host without Quantix metadata: it is not the vDC's, and is left alone", id, f.dom.Name)
	}
	if f != nil && f.meta.Node != "" && f.meta.Node != node {
		return fmt.Errorf("domain %s belongs to node %s, not this node (%s): not touched", id, f.meta.Node, node)
	}
	if vm.Power != quantix.WantedRunning && vm.Power != quantix.WantedStopped {
		return fmt.Errorf("vm %s: unknown wanted power %q", id, vm.Power)
	}

	meta := Metadata{Node: node, Generation: vm.Generation, RebootCount: vm.RebootCount}
	if f != nil {
		meta.RebootCount = f.meta.RebootCount
	}
	if f == nil || f.meta.Generation != vm.Generation || f.meta.Node != node {
		if err := r.define(ctx, lv, vm, f, meta, images); err != nil {
			return err
		}
		if f, err = lookup(lv, id); err != nil {
			return err
		}
		if f == nil {
			return fmt.Errorf("domain %s: gone right after its definition", id)
		}
	}
	auto := int32(0)
	if vm.Power == quantix.WantedRunning {
		auto = 1
	}
	if cur, err := lv.DomainGetAutostart(f.dom); err != nil || cur != auto {
		if err := lv.DomainSetAutostart(f.dom, auto); err != nil {
			return fmt.Errorf("domain %s: set autostart: %w", id, err)
		}
	}
	return r.power(lv, vm, f)
}

// power starts, stops or reboots a defined managed domain.
func (r *Reconciler) power(lv *libvirt.Libvirt, vm quantix.DesiredVM, f *found) error {
	id := strings.ToLower(vm.UUID)
	if vm.Power == quantix.WantedRunning {
		delete(r.stopping, id)
		if _, err := os.Stat(r.cfg.HaltMarker); err == nil {
			// The host is powering off and shutting its guests down: starting one
			// now would only have it killed.
			r.log.Debug("host shutting guests down; not starting", "vm", id, "marker", r.cfg.HaltMarker)
			return nil
		}
		switch {
		case !f.active():
			// A fresh boot settles every reboot asked for so far.
			if f.meta.RebootCount != vm.RebootCount {
				if err := r.setRebootCount(lv, f, vm.RebootCount); err != nil {
					return err
				}
			}
			if err := lv.DomainCreate(f.dom); err != nil {
				return fmt.Errorf("start domain %s: %w", id, err)
			}
			r.log.Info("vm started", "vm", id, "name", f.dom.Name)
		case f.state == libvirt.DomainPaused:
			if err := lv.DomainResume(f.dom); err != nil {
				return fmt.Errorf("resume domain %s: %w", id, err)
			}
			r.log.Info("vm resumed", "vm", id)
		case vm.RebootCount > f.meta.RebootCount:
			// Recorded first: an agent restart in between must not reboot twice.
			if err := r.setRebootCount(lv, f, vm.RebootCount); err != nil {
				return err
			}
			if err := lv.DomainReboot(f.dom, 0); err != nil {
				return fmt.Errorf("reboot domain %s: %w", id, err)
			}
			r.log.Info("vm rebooted", "vm", id, "reboot_count", vm.RebootCount)
		}
		return nil
	}
	if !f.active() {
		delete(r.stopping, id)
		return nil
	}
	deadline, pending := r.stopping[id]
	switch {
	case vm.ForceStop || (pending && time.Now().After(deadline)):
		if err := lv.DomainDestroy(f.dom); err != nil && !isLibvirtErr(err, libvirt.ErrOperationInvalid) {
			return fmt.Errorf("force off domain %s: %w", id, err)
		}
		delete(r.stopping, id)
		r.log.Info("vm forced off", "vm", id, "after_acpi", pending)
	case !pending:
		timeout := time.Duration(vm.Spec.StopTimeoutSeconds) * time.Second
		if timeout <= 0 {
			timeout = quantix.DefaultStopTimeoutSeconds * time.Second
		}
		// libvirt's default method: ACPI for a QEMU guest without a guest agent.
		if err := lv.DomainShutdown(f.dom); err != nil && !isLibvirtErr(err, libvirt.ErrOperationInvalid) {
			return fmt.Errorf("shut down domain %s: %w", id, err)
		}
		r.stopping[id] = time.Now().Add(timeout)
		r.log.Info("vm shutting down (acpi)", "vm", id, "force_after", timeout)
	}
	return nil
}

// setRebootCount records the applied reboot count in the persistent definition.
func (r *Reconciler) setRebootCount(lv *libvirt.Libvirt, f *found, n int64) error {
	m := f.meta
	m.RebootCount = n
	b, err := xml.Marshal(m)
	if err != nil {
		return fmt.Errorf("domain %s: metadata: %w", f.dom.Name, err)
	}
	if err := lv.DomainSetMetadata(f.dom, int32(libvirt.DomainMetadataElement), libvirt.OptString{string(b)},
		libvirt.OptString{"qx"}, libvirt.OptString{MetadataNS}, libvirt.DomainAffectConfig); err != nil {
		return fmt.Errorf("domain %s: record reboot count: %w", f.dom.Name, err)
	}
	f.meta = m
	return nil
}

// define creates the VM's volumes and (re)defines its domain. Changes to a running
// domain's hardware take effect at its next start (libvirt keeps the live
// definition).
func (r *Reconciler) define(ctx context.Context, lv *libvirt.Libvirt, vm quantix.DesiredVM, f *found, meta Metadata, images map[string]quantix.DesiredImage) error {
	id := strings.ToLower(vm.UUID)
	if err := vm.Spec.Validate(); err != nil {
		return fmt.Errorf("vm %s: spec: %w", id, err)
	}
	for i, n := range vm.Spec.NICs {
		if n.MAC == "" {
			return fmt.Errorf("vm %s: nics[%d] has no MAC (the vDC assigns one)", id, i)
		}
	}
	// Every image first: a VM whose image is missing or wrong gets nothing.
	paths := map[string]string{}
	need := func(imgID string) error {
		img, ok := images[imgID]
		if !ok {
			return fmt.Errorf("image %s: not in the desired state's images", imgID)
		}
		p, err := r.cache.Ensure(ctx, img)
		if err != nil {
			return err
		}
		paths[imgID] = p
		return nil
	}
	for _, dk := range vm.Spec.Disks {
		if dk.ImageID != "" {
			if err := need(dk.ImageID); err != nil {
				return err
			}
		}
	}
	if vm.Spec.CDROM != "" {
		if err := need(vm.Spec.CDROM); err != nil {
			return err
		}
		if images[vm.Spec.CDROM].Format != quantix.ImageISO {
			return fmt.Errorf("image %s: a CD-ROM must be an %s image, not %s", vm.Spec.CDROM, quantix.ImageISO, images[vm.Spec.CDROM].Format)
		}
	}
	pool, err := lv.StoragePoolLookupByName(r.cfg.Pool)
	if err != nil {
		return fmt.Errorf("storage pool %s: %w", r.cfg.Pool, err)
	}
	if err := os.MkdirAll(r.cfg.ConsoleDir, 0o755); err != nil {
		return fmt.Errorf("console folder: %w", err)
	}
	disks := make([]Disk, len(vm.Spec.Disks))
	for i, dk := range vm.Spec.Disks {
		var img *quantix.DesiredImage
		if dk.ImageID != "" {
			x := images[dk.ImageID]
			img = &x
		}
		// Before the first definition a volume may be left from a download cut
		// short: made again. Afterwards the volume is the guest's disk.
		d, err := r.ensureVolume(lv, pool, id, i, dk, img, paths[dk.ImageID], f == nil)
		if err != nil {
			return err
		}
		disks[i] = d
	}
	name := vm.Spec.Name
	if f != nil && f.dom.Name != name {
		if f.active() {
			name = f.dom.Name // renamed when it is next stopped
		} else if _, err := lv.DomainRename(f.dom, libvirt.OptString{name}, 0); err != nil {
			return fmt.Errorf("rename domain %s from %s to %s: %w", id, f.dom.Name, name, err)
		}
	}
	x, err := DomainXML(vm, name, disks, meta, r.layout())
	if err != nil {
		return err
	}
	if _, err := lv.DomainDefineXML(x); err != nil {
		return fmt.Errorf("define domain %s: %w", id, err)
	}
	r.log.Info("vm defined", "vm", id, "name", name, "generation", vm.Generation)
	return nil
}

// ensureVolume makes disk i of a VM in the pool: blank (qcow2) of its size, or a
// copy of its image grown to its size.
func (r *Reconciler) ensureVolume(lv *libvirt.Libvirt, pool libvirt.StoragePool, id string, i int, dk quantix.DiskSpec, img *quantix.DesiredImage, imgPath string, fresh bool) (Disk, error) {
	format := quantix.ImageQCOW2
	if img != nil {
		format = img.Format
		if format != quantix.ImageRaw && format != quantix.ImageQCOW2 {
			return Disk{}, fmt.Errorf("image %s: a disk must be a %s or %s image, not %s", img.ID, quantix.ImageRaw, quantix.ImageQCOW2, format)
		}
	}
	name := VolumeName(id, i, format)
	disk := Disk{Volume: name, Format: format}
	if vol, err := lv.StorageVolLookupByName(pool, name); err == nil {
		if !fresh {
			return disk, nil
		}
		if err := lv.StorageVolDelete(vol, 0); err != nil {
			return Disk{}, fmt.Errorf("volume %s: remove a leftover: %w", name, err)
		}
	} else if !isLibvirtErr(err, libvirt.ErrNoStorageVol) {
		return Disk{}, fmt.Errorf("volume %s: %w", name, err)
	}
	capacity := dk.SizeBytes
	if img != nil {
		capacity = max(capacity, img.SizeBytes)
		if format == quantix.ImageQCOW2 {
			capacity = img.SizeBytes // the upload replaces the file; grown below
		}
	}
	vol, err := lv.StorageVolCreateXML(pool, volumeXML(name, format, capacity), 0)
	if err != nil {
		return Disk{}, fmt.Errorf("create volume %s: %w", name, err)
	}
	if img == nil {
		r.log.Info("volume created", "volume", name, "bytes", capacity)
		return disk, nil
	}
	fail := func(err error) (Disk, error) {
		lv.StorageVolDelete(vol, 0)
		return Disk{}, fmt.Errorf("volume %s from image %s: %w", name, img.ID, err)
	}
	src, err := os.Open(imgPath)
	if err != nil {
		return fail(err)
	}
	defer src.Close()
	if err := lv.StorageVolUpload(vol, src, 0, uint64(img.SizeBytes), 0); err != nil {
		return fail(fmt.Errorf("upload: %w", err))
	}
	if format == quantix.ImageQCOW2 {
		virt, err := qcow2VirtualSize(imgPath)
		if err != nil {
			return fail(err)
		}
		if dk.SizeBytes > virt {
			if err := lv.StoragePoolRefresh(pool, 0); err != nil {
				return fail(fmt.Errorf("refresh pool: %w", err))
			}
			if vol, err = lv.StorageVolLookupByName(pool, name); err != nil {
				return fail(err)
			}
			if err := lv.StorageVolResize(vol, uint64(dk.SizeBytes), 0); err != nil {
				return fail(fmt.Errorf("grow to %d bytes: %w", dk.SizeBytes, err))
			}
		}
	}
	r.log.Info("volume copied from image", "volume", name, "image", img.ID)
	return disk, nil
}

func volumeXML(name, format string, capacity int64) string {
	return fmt.Sprintf(`<volume><name>%s</name><capacity unit="bytes">%d</capacity><target><format type=%q/></target></volume>`, name, capacity, format)
}

// deleteVM stops and undefines a deleted VM (its NVRAM with it) and removes its
// volumes unless KeepDisks. A domain without Quantix metadata is refused.
func (r *Reconciler) deleteVM(lv *libvirt.Libvirt, del quantix.DeletedVM) error {
	id := strings.ToLower(del.UUID)
	f, err := lookup(lv, id)
	if err != nil {
		return err
	}
	if f != nil {
		if !f.managed {
			return fmt.Errorf("domain %s (%s) has no Quantix metadata: not deleted", id, f.dom.Name)
		}
		if f.active() {
			if err := lv.DomainDestroy(f.dom); err != nil && !isLibvirtErr(err, libvirt.ErrOperationInvalid) {
				return fmt.Errorf("destroy domain %s: %w", id, err)
			}
		}
		if err := lv.DomainUndefineFlags(f.dom, libvirt.DomainUndefineNvram|libvirt.DomainUndefineManagedSave|libvirt.DomainUndefineSnapshotsMetadata); err != nil && !isLibvirtErr(err, libvirt.ErrNoDomain) {
			return fmt.Errorf("undefine domain %s: %w", id, err)
		}
		r.log.Info("vm deleted", "vm", id, "name", f.dom.Name, "keep_disks", del.KeepDisks)
	}
	delete(r.stopping, id)
	if del.KeepDisks {
		return nil
	}
	pool, err := lv.StoragePoolLookupByName(r.cfg.Pool)
	if err != nil {
		return fmt.Errorf("storage pool %s: %w", r.cfg.Pool, err)
	}
	vols, _, err := lv.StoragePoolListAllVolumes(pool, 1, 0)
	if err != nil {
		return fmt.Errorf("list volumes of %s: %w", r.cfg.Pool, err)
	}
	for _, v := range vols {
		if strings.HasPrefix(v.Name, id+"-disk") {
			if err := lv.StorageVolDelete(v, 0); err != nil && !isLibvirtErr(err, libvirt.ErrNoStorageVol) {
				return fmt.Errorf("delete volume %s: %w", v.Name, err)
			}
			r.log.Info("volume deleted", "volume", v.Name)
		}
	}
	os.Remove(r.layout().ConsolePath(id))
	return nil
}

// noteLeftAlone logs, once each, managed domains the vDC neither wants nor deleted:
// they stay as they are (never started) and are reported in the inventory.
func (r *Reconciler) noteLeftAlone(lv *libvirt.Libvirt, wanted map[string]bool) {
	doms, _, err := lv.ConnectListAllDomains(1, 0)
	if err != nil {
		return
	}
	for _, d := range doms {
		id := uuid.UUID(d.UUID).String()
		if wanted[id] || r.left[id] {
			continue
		}
		x, err := lv.DomainGetXMLDesc(d, libvirt.DomainXMLInactive)
		if err != nil {
			continue
		}
		// Checked once per agent process: managed or not does not change.
		r.left[id] = true
		if _, managed, _ := ParseMetadata(x); managed {
			r.log.Warn("managed domain not in the desired state; left alone", "vm", id, "name", d.Name)
		}
	}
}
