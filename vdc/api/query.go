package api

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/store"
)

// Query parameter limits of the list endpoints.
const (
	DefaultPageLimit = 100
	MaxPageLimit     = 1000
)

// HeaderTotalCount carries, on GET /api/v1/vms and /storage-pools, how many rows
// match the filters in all pages.
const HeaderTotalCount = "X-Total-Count"

// checkParams refuses query parameters outside allowed, so a typo ("phse=ready")
// is an error rather than an unfiltered answer.
func checkParams(q url.Values, allowed ...string) error {
	for k, v := range q {
		ok := false
		for _, a := range allowed {
			ok = ok || k == a
		}
		if !ok {
			return badRequest("unknown query parameter %q (want %s)", k, strings.Join(allowed, ", "))
		}
		if len(v) > 1 {
			return badRequest("query parameter %q is given %d times", k, len(v))
		}
	}
	return nil
}

func intParam(q url.Values, name string, def, min, max int) (int, error) {
	s := q.Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < min || n > max {
		return 0, badRequest("query parameter %s=%q: want an integer %d..%d", name, s, min, max)
	}
	return n, nil
}

// nodeFilter reads GET /api/v1/nodes's optional parameters: phase, q (hostname
// substring), limit (1..1000, default 100) and offset. paged is false when none is
// given: the answer is then every node, as before pagination existed.
func nodeFilter(r *http.Request) (f store.NodeFilter, paged bool, err error) {
	q := r.URL.Query()
	if err := checkParams(q, "phase", "q", "limit", "offset"); err != nil {
		return f, false, err
	}
	if len(q) == 0 {
		return f, false, nil
	}
	switch p := q.Get("phase"); p {
	case "", quantix.PhaseReady, quantix.PhaseNotReady, quantix.PhaseDisconnected, quantix.PhaseMaintenance:
		f.Phase = p
	default:
		return f, false, badRequest("query parameter phase=%q: want ready, not_ready, disconnected or maintenance", p)
	}
	f.Query = strings.ToLower(strings.TrimSpace(q.Get("q")))
	if err := checkText("query parameter q", f.Query, 253, false); err != nil {
		return f, false, err
	}
	if f.Limit, err = intParam(q, "limit", DefaultPageLimit, 1, MaxPageLimit); err != nil {
		return f, false, err
	}
	if f.Offset, err = intParam(q, "offset", 0, 0, 1<<30); err != nil {
		return f, false, err
	}
	return f, true, nil
}

// inventoryFilter reads GET /api/v1/vms's and /storage-pools's optional
// parameters: node_id, lost (true or false), limit (1..1000; none: every row) and
// offset.
func inventoryFilter(r *http.Request) (f store.InventoryFilter, err error) {
	q := r.URL.Query()
	if err := checkParams(q, "node_id", "lost", "limit", "offset"); err != nil {
		return f, err
	}
	if id := q.Get("node_id"); id != "" {
		if !IsUUID(id) {
			return f, badRequest("query parameter node_id=%q is not a UUID", id)
		}
		f.NodeID = strings.ToLower(id)
	}
	switch l := q.Get("lost"); l {
	case "":
	case "true", "false":
		b := l == "true"
		f.Lost = &b
	default:
		return f, badRequest("query parameter lost=%q: want true or false", l)
	}
	if f.Limit, err = intParam(q, "limit", 0, 1, MaxPageLimit); err != nil {
		return f, err
	}
	if f.Offset, err = intParam(q, "offset", 0, 0, 1<<30); err != nil {
		return f, err
	}
	return f, nil
}
