package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/store"
)

// This file is the vDC appliance's own upgrade (PathController, upgrades.go in
// the root package): the vDC asks its local qx-init, as a node's agent asks its
// own, for the slots and to stage a release bundle from data_dir. Init verifies
// the bundle again against the keys the appliance trusts and writes nothing when
// it refuses; the vDC judges only what init cannot know (the release library, a
// rolling upgrade of the nodes under way).

// controllerEvents is how many of this vDC's upgrade events GET PathController
// shows.
const controllerEvents = 10

// noInit says whether err is the absence of qx-init (nothing to connect to on
// its socket) rather than an answer from it.
func noInit(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

func (a *API) controller(w http.ResponseWriter, r *http.Request) {
	c := quantix.ControllerOS{Hostname: a.cfg.Hostname, Version: a.cfg.Version}
	st, err := a.cfg.Init.Slots(r.Context())
	switch {
	case err == nil:
		c.Slots = &st
		for _, s := range st.Slots {
			if s.Slot == st.Booted {
				c.Image = s.Image
			}
		}
	case noInit(err):
		c.Unavailable = fmt.Sprintf("this vDC does not run under qx-init (%v): a development run? Its operating system is not managed here and cannot be upgraded through the API", err)
	default:
		c.Unavailable = fmt.Sprintf("qx-init has no A/B slots for this vDC (%v): it cannot be upgraded through the API", err)
	}
	c.Events, err = a.cfg.Store.ControllerEvents(r.Context(), a.cfg.Hostname, controllerEvents)
	answer(a, w, r, http.StatusOK, c, err)
}

// upgradeController has the local init stage a stored qvdc release and, with
// Activate, reboots into it once the answer is sent.
func (a *API) upgradeController(w http.ResponseWriter, r *http.Request) {
	var req quantix.ControllerUpgradeRequest
	if err := decode(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if _, err := a.cfg.Init.Slots(r.Context()); err != nil {
		a.fail(w, r, initError(err, "upgrade this vDC", http.StatusConflict))
		return
	}
	rel, err := a.cfg.Store.ControllerRelease(r.Context(), req.Release, a.cfg.Version)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	// Init reads the folder by its own path: make it absolute.
	dir, err := filepath.Abs(filepath.Join(a.cfg.DataDir, store.ReleaseDir(rel.ID)))
	if err == nil {
		err = filesHere(w, rel, dir)
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	// Once asked, init stages whether or not the client waits: record it either way.
	ctx := context.WithoutCancel(r.Context())
	staged, err := a.cfg.Init.Stage(ctx, dir)
	if err != nil && !noInit(err) {
		// The folder is this vDC's own business: the answer names the release.
		err = errors.New(strings.NewReplacer(quantix.InitRequestStage+" "+dir+": ", "", "verify bundle "+dir+": ", "").Replace(err.Error()))
	}
	if err != nil {
		if !noInit(err) {
			a.event(ctx, quantix.ControllerRefused, fmt.Sprintf("qx-init refused release %s (%s %s): %v", rel.ID, rel.Image, rel.Version, err))
		}
		a.fail(w, r, initError(err, "stage release "+rel.Image+" "+rel.Version, http.StatusUnprocessableEntity))
		return
	}
	a.event(ctx, quantix.ControllerStaged, fmt.Sprintf("staged %s %s (release %s, signed by %s) into slot %s; activate: %v",
		staged.Image, staged.Version, rel.ID, staged.SignedBy, staged.Slot, req.Activate))
	a.log.Info("vdc upgrade staged", "release", rel.ID, "version", staged.Version, "slot", staged.Slot, "activate", req.Activate)
	res := quantix.ControllerUpgrade{Release: rel, Staged: staged, Rebooting: req.Activate}
	if !req.Activate {
		writeJSON(w, http.StatusOK, res)
		return
	}
	// The whole answer goes out before init stops this vDC for the reboot.
	b, _ := json.Marshal(res)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	w.Write(b)
	if err := http.NewResponseController(w).Flush(); err != nil {
		a.log.Warn("vdc upgrade: flush the answer before the reboot", "err", err)
	}
	// Recorded first: init stops this vDC as soon as it takes the request.
	a.event(ctx, quantix.ControllerRebooting, fmt.Sprintf("rebooting into slot %s (%s %s) as a trial", staged.Slot, staged.Image, staged.Version))
	if err := a.cfg.Init.Power(ctx, quantix.Reboot); err != nil {
		a.log.Error("vdc upgrade: reboot", "err", err)
		a.event(ctx, quantix.ControllerRebootFailed, fmt.Sprintf("reboot into slot %s failed: %v; it boots %s %s at the next reboot", staged.Slot, err, staged.Image, staged.Version))
	}
}

// initError is what a request that needs init answers when init failed: 503
// without init (a development run), else code with init's answer (409: no
// slots to upgrade; 422: the bundle refused).
func initError(err error, what string, code int) error {
	if noInit(err) {
		return &httpError{http.StatusServiceUnavailable, fmt.Sprintf("cannot %s: this vDC does not run under qx-init (%v)", what, err)}
	}
	return &httpError{code, fmt.Sprintf("cannot %s: qx-init refused: %v", what, err)}
}

// event records one of this vDC's upgrade events; a failure is logged only (the
// upgrade itself has happened or not by then).
func (a *API) event(ctx context.Context, kind, msg string) {
	if err := a.cfg.Store.AddControllerEvent(ctx, a.cfg.Hostname, kind, msg); err != nil {
		a.log.Warn("record vdc upgrade event", "kind", kind, "err", err)
	}
}
