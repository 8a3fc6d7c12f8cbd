package api

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/store"
)

func (a *API) register(w http.ResponseWriter, r *http.Request) {
	var req quantix.RegisterRequest
	if err := decode(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	hostname, err := quantix.NormalizeHostname(req.Hostname)
	if err != nil {
		a.fail(w, r, badRequest("hostname: %v", err))
		return
	}
	ip, err := ParseManagementIP(req.ManagementIP)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := checkRegister(&req); err != nil {
		a.fail(w, r, err)
		return
	}
	reg := store.Registration{
		Hostname: hostname, MachineID: req.MachineID, NodeSecret: req.NodeSecret, ManagementIP: ip,
		AgentVersion: req.AgentVersion, MemoryBytes: req.MemoryBytes, Labels: req.Labels,
		Hypervisor: req.Hypervisor, JoinToken: bearer(r),
	}
	if req.CPU != nil {
		reg.CPU = *req.CPU
	}
	res, err := a.cfg.Store.Register(r.Context(), reg)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.cfg.Metrics.Registration(res.Kind)
	a.log.Info("node registered", "node_id", res.NodeID, "hostname", hostname, "registration", res.Kind, "ip", ip)
	code := http.StatusOK
	if res.Kind == quantix.RegistrationRegistered {
		code = http.StatusCreated
	}
	writeJSON(w, code, quantix.RegisterResponse{NodeID: res.NodeID, Registration: res.Kind,
		HeartbeatIntervalSeconds: a.intervalSeconds(), AgentCAPins: a.pins(), VDCURLs: a.cfg.AgentURLs})
}

// nodeAuth reads the node id from the path and checks the node's bearer secret.
func (a *API) nodeAuth(r *http.Request) (string, [32]byte, error) {
	id, err := nodeID(r)
	if err != nil {
		return "", [32]byte{}, err
	}
	secret := bearer(r)
	if secret == "" {
		return "", [32]byte{}, &httpError{http.StatusUnauthorized, "missing node secret (Authorization: Bearer <node_secret>)"}
	}
	h, err := a.cfg.Store.Authenticate(r.Context(), id, secret)
	if errors.Is(err, store.ErrNotFound) {
		return "", h, &httpError{http.StatusNotFound, "node " + id + " is not registered (deleted?); register again"}
	}
	return id, h, err
}

func (a *API) heartbeat(w http.ResponseWriter, r *http.Request) {
	id, secret, err := a.nodeAuth(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var req quantix.HeartbeatRequest
	if err := decode(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	ip, err := ParseManagementIP(req.ManagementIP)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if req.CPUPercent != nil && *req.CPUPercent < 0 {
		a.fail(w, r, badRequest("cpu_percent is %v, want 0 or more", *req.CPUPercent))
		return
	}
	if req.MemoryUsedBytes != nil && *req.MemoryUsedBytes < 0 {
		a.fail(w, r, badRequest("memory_used_bytes is %d, want 0 or more", *req.MemoryUsedBytes))
		return
	}
	if req.AppliedGeneration < 0 {
		a.fail(w, r, badRequest("applied_generation is %d, want 0 or more", req.AppliedGeneration))
		return
	}
	if err := checkText("state_hash", req.StateHash, 128, false); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := checkHypervisor(req.Hypervisor); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := checkNodeOS(req.OS); err != nil {
		a.fail(w, r, err)
		return
	}
	res, err := a.cfg.Heartbeats.Submit(r.Context(), store.Heartbeat{NodeID: id, SecretHash: secret, ManagementIP: ip,
		CPUPercent: req.CPUPercent, MemoryUsedBytes: req.MemoryUsedBytes, Hypervisor: req.Hypervisor, StateHash: req.StateHash,
		AppliedGeneration: req.AppliedGeneration, OS: req.OS})
	if err == nil {
		err = res.Err
	}
	if errors.Is(err, store.ErrNotFound) {
		err = &httpError{http.StatusNotFound, "node " + id + " is not registered (deleted?); register again"}
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.cfg.Metrics.Heartbeat()
	writeJSON(w, http.StatusOK, quantix.HeartbeatResponse{HeartbeatIntervalSeconds: a.intervalSeconds(), FullSync: res.FullSync,
		DesiredGeneration: res.DesiredGeneration, AgentCAPins: a.pins(), VDCURLs: a.cfg.AgentURLs})
}

func (a *API) putState(w http.ResponseWriter, r *http.Request) {
	id, secret, err := a.nodeAuth(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var st quantix.NodeState
	if err := decode(w, r, &st); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := checkState(&st); err != nil {
		a.fail(w, r, err)
		return
	}
	ack, err := a.cfg.Store.PutState(r.Context(), id, secret, st)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ack)
}

func (a *API) postEvents(w http.ResponseWriter, r *http.Request) {
	id, secret, err := a.nodeAuth(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var evs quantix.NodeEvents
	if err := decode(w, r, &evs); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := checkEvents(&evs); err != nil {
		a.fail(w, r, err)
		return
	}
	ack, err := a.cfg.Store.ApplyEvents(r.Context(), id, secret, evs)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ack)
}

func (a *API) withInterval(n quantix.Node) quantix.Node {
	n.HeartbeatInterval = a.intervalSeconds()
	return n
}

func (a *API) listNodes(w http.ResponseWriter, r *http.Request) {
	f, paged, err := nodeFilter(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if !paged {
		nodes, err := a.cfg.Store.ListNodes(r.Context())
		if err != nil {
			a.fail(w, r, err)
			return
		}
		for i := range nodes {
			nodes[i] = a.withInterval(nodes[i])
		}
		writeJSON(w, http.StatusOK, quantix.NodeList{Nodes: nodes})
		return
	}
	page, err := a.cfg.Store.ListNodesPage(r.Context(), f)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	for i := range page.Nodes {
		page.Nodes[i] = a.withInterval(page.Nodes[i])
	}
	writeJSON(w, http.StatusOK, quantix.NodeList{Nodes: page.Nodes, Total: &page.Total, Counts: page.Counts,
		Limit: f.Limit, Offset: f.Offset})
}

func (a *API) getNode(w http.ResponseWriter, r *http.Request) {
	id, err := nodeID(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	n, err := a.cfg.Store.GetNode(r.Context(), id)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, a.withInterval(n))
}

func (a *API) deleteNode(w http.ResponseWriter, r *http.Request) {
	id, err := nodeID(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	q := r.URL.Query()
	if err := checkParams(q, "force"); err != nil {
		a.fail(w, r, err)
		return
	}
	force, err := boolParam(q.Get("force"), "force")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.cfg.Store.DeleteNode(r.Context(), id, force); err != nil {
		a.fail(w, r, err)
		return
	}
	a.log.Info("node deleted", "node_id", id, "force", force)
	w.WriteHeader(http.StatusNoContent)
}

// NodeEventList is the body of GET /api/v1/nodes/{id}/events.
type NodeEventList struct {
	Events []quantix.NodeEvent `json:"events"`
}

func (a *API) nodeEvents(w http.ResponseWriter, r *http.Request) {
	id, err := nodeID(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	q := r.URL.Query()
	if err := checkParams(q, "limit"); err != nil {
		a.fail(w, r, err)
		return
	}
	limit, err := intParam(q, "limit", 0, 1, 100000)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	evs, err := a.cfg.Store.NodeEventsTail(r.Context(), id, limit)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, NodeEventList{Events: evs})
}

// MaintenanceRequest is the body of PUT /api/v1/nodes/{id}/maintenance.
type MaintenanceRequest struct {
	Maintenance *bool `json:"maintenance"`
}

func (a *API) maintenance(w http.ResponseWriter, r *http.Request) {
	id, err := nodeID(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var req MaintenanceRequest
	if err := decode(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if req.Maintenance == nil {
		a.fail(w, r, badRequest("maintenance is missing: want true or false"))
		return
	}
	n, err := a.cfg.Store.SetMaintenance(r.Context(), id, *req.Maintenance, a.cfg.HeartbeatInterval, a.cfg.Store.Grace())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, a.withInterval(n))
}

func (a *API) listVMs(w http.ResponseWriter, r *http.Request) {
	f, err := inventoryFilter(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	vms, total, err := a.cfg.Store.FindVMs(r.Context(), f)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	managed, err := a.cfg.Store.ListManagedVMs(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if f.NodeID != "" {
		mine := []quantix.ManagedVM{}
		for _, m := range managed {
			if m.NodeID == f.NodeID {
				mine = append(mine, m)
			}
		}
		managed = mine
	}
	w.Header().Set(HeaderTotalCount, strconv.Itoa(total))
	writeJSON(w, http.StatusOK, quantix.VMList{VMs: vms, Managed: managed})
}

func (a *API) listPools(w http.ResponseWriter, r *http.Request) {
	f, err := inventoryFilter(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	pools, total, err := a.cfg.Store.FindPools(r.Context(), f)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set(HeaderTotalCount, strconv.Itoa(total))
	writeJSON(w, http.StatusOK, quantix.PoolList{StoragePools: pools})
}

func (a *API) createJoinToken(w http.ResponseWriter, r *http.Request) {
	var req quantix.JoinTokenRequest
	if err := decode(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	ttl := time.Duration(req.TTLSeconds) * time.Second
	switch {
	case req.TTLSeconds < 0 || ttl > MaxJoinTokenTTL:
		a.fail(w, r, badRequest("ttl_seconds is %d, want 1..%d (0: %d)", req.TTLSeconds, int(MaxJoinTokenTTL.Seconds()), int(DefaultJoinTokenTTL.Seconds())))
		return
	case req.TTLSeconds == 0:
		ttl = DefaultJoinTokenTTL
	}
	uses := req.Uses
	switch {
	case uses < 0 || uses > MaxJoinTokenUses:
		a.fail(w, r, badRequest("uses is %d, want 1..%d (0: %d)", uses, MaxJoinTokenUses, DefaultJoinTokenUses))
		return
	case uses == 0:
		uses = DefaultJoinTokenUses
	}
	if err := checkText("description", req.Description, 256, false); err != nil {
		a.fail(w, r, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	tok, err := a.cfg.Store.CreateJoinToken(ctx, ttl, uses, req.Description)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if a.cfg.AgentCA != nil {
		tok.Token = quantix.FormatJoinToken(a.cfg.AgentCA.JoinTokenPin(), tok.Token)
	}
	a.log.Info("join token created", "id", tok.ID, "uses", uses, "expires_at", tok.ExpiresAt)
	writeJSON(w, http.StatusCreated, tok)
}
