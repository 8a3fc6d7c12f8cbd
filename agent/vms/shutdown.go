package vms

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/digitalocean/go-libvirt"
)

// ShutdownAll is the clean host power-off of docs/design.md §14: every running
// guest, managed or not, gets an ACPI shutdown; those still running after timeout
// (or when ctx ends) are forced off. Autostart flags are untouched, so the guests
// the vDC wants running come back with the host. It returns how many guests were
// forced off.
func ShutdownAll(ctx context.Context, lv *libvirt.Libvirt, timeout time.Duration, log *slog.Logger) (forced int, err error) {
	doms, _, err := lv.ConnectListAllDomains(1, libvirt.ConnectListDomainsActive)
	if err != nil {
		return 0, fmt.Errorf("list running domains: %w", err)
	}
	for _, d := range doms {
		if err := lv.DomainShutdown(d); err != nil && !isLibvirtErr(err, libvirt.ErrOperationInvalid) && !isLibvirtErr(err, libvirt.ErrNoDomain) {
			log.Warn("acpi shutdown failed; the guest will be forced off", "domain", d.Name, "err", err)
		}
	}
	log.Info("shutting guests down", "guests", len(doms), "force_after", timeout)
	deadline := time.Now().Add(timeout)
	for {
		running := 0
		for _, d := range doms {
			if active, err := lv.DomainIsActive(d); err == nil && active == 1 {
				running++
			}
		}
		if running == 0 {
			return forced, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
	for _, d := range doms {
		if active, err := lv.DomainIsActive(d); err != nil || active != 1 {
			continue
		}
		if err := lv.DomainDestroy(d); err != nil && !isLibvirtErr(err, libvirt.ErrOperationInvalid) && !isLibvirtErr(err, libvirt.ErrNoDomain) {
			return forced, fmt.Errorf("force off domain %s: %w", d.Name, err)
		}
		forced++
		log.Warn("guest forced off after the shutdown timeout", "domain", d.Name)
	}
	return forced, nil
}
