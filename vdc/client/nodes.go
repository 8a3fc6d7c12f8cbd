package client

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/quantix/quantix"
)

// NodeNotFoundError says that no node has the id or hostname asked for. It matches
// ErrNotFound.
type NodeNotFoundError struct {
	Ref     string
	Similar []string // hostnames containing Ref, to help with typos
}

func (e *NodeNotFoundError) Error() string {
	msg := fmt.Sprintf("no node with id or hostname %q", e.Ref)
	if len(e.Similar) > 0 {
		msg += " (did you mean " + strings.Join(e.Similar, ", ") + "?)"
	}
	return msg
}

// Is matches ErrNotFound.
func (e *NodeNotFoundError) Is(target error) bool { return target == ErrNotFound }

// AmbiguousNodeError says that a reference is the id of one node and the hostname of
// another (a hostname may look like a UUID). It matches ErrAmbiguous.
type AmbiguousNodeError struct {
	Ref        string
	ByID       quantix.Node
	ByHostname quantix.Node
}

func (e *AmbiguousNodeError) Error() string {
	return fmt.Sprintf("%q is the id of node %s and the hostname of node %s; name the node by its id",
		e.Ref, e.ByID.Hostname, e.ByHostname.ID)
}

// Is matches ErrAmbiguous.
func (e *AmbiguousNodeError) Is(target error) bool { return target == ErrAmbiguous }

// FindNode picks the node that ref names among nodes: the node with that id, or the
// node with exactly that hostname (compared in lower case, as the vDC does). A
// reference that names two different nodes is an *AmbiguousNodeError, one that names
// none a *NodeNotFoundError.
func FindNode(nodes []quantix.Node, ref string) (quantix.Node, error) {
	want := strings.ToLower(strings.TrimSpace(ref))
	var byID, byName *quantix.Node
	var similar []string
	for i := range nodes {
		n := &nodes[i]
		if strings.ToLower(n.ID) == want {
			byID = n
		}
		if strings.ToLower(n.Hostname) == want {
			byName = n
		}
		if want != "" && strings.Contains(strings.ToLower(n.Hostname), want) {
			similar = append(similar, n.Hostname)
		}
	}
	switch {
	case byID != nil && byName != nil && byID.ID != byName.ID:
		return quantix.Node{}, &AmbiguousNodeError{Ref: ref, ByID: *byID, ByHostname: *byName}
	case byID != nil:
		return *byID, nil
	case byName != nil:
		return *byName, nil
	}
	sort.Strings(similar)
	if len(similar) > 5 {
		similar = append(similar[:5], "...")
	}
	return quantix.Node{}, &NodeNotFoundError{Ref: ref, Similar: similar}
}

// ResolveNode returns the node that ref (an id or an exact hostname) names; see
// FindNode.
func (c *Client) ResolveNode(ctx context.Context, ref string) (quantix.Node, error) {
	if strings.TrimSpace(ref) == "" {
		return quantix.Node{}, &NodeNotFoundError{Ref: ref}
	}
	nodes, err := c.Nodes(ctx)
	if err != nil {
		return quantix.Node{}, err
	}
	return FindNode(nodes, ref)
}

// NodeDetail is one node with its history, VMs and storage pools.
type NodeDetail struct {
	Node         quantix.Node            `json:"node"`
	Events       []quantix.NodeEvent     `json:"events"`
	VMs          []quantix.InventoryVM   `json:"vms"`
	StoragePools []quantix.InventoryPool `json:"storage_pools"`
}

// NodeDetail fetches node id, its events, and its VMs and pools from the inventory.
func (c *Client) NodeDetail(ctx context.Context, id string) (NodeDetail, error) {
	var d NodeDetail
	var err error
	if d.Node, err = c.Node(ctx, id); err != nil {
		return d, err
	}
	if d.Events, err = c.NodeEvents(ctx, id); err != nil {
		return d, err
	}
	vms, err := c.VMs(ctx)
	if err != nil {
		return d, err
	}
	pools, err := c.Pools(ctx)
	if err != nil {
		return d, err
	}
	d.VMs, d.StoragePools = VMsOf(vms, d.Node.ID), PoolsOf(pools, d.Node.ID)
	if d.Events == nil {
		d.Events = []quantix.NodeEvent{}
	}
	return d, nil
}

// VMsOf returns the VMs of node id (all of them for id ""), never nil.
func VMsOf(vms []quantix.InventoryVM, id string) []quantix.InventoryVM {
	out := []quantix.InventoryVM{}
	for _, v := range vms {
		if id == "" || strings.EqualFold(v.NodeID, id) {
			out = append(out, v)
		}
	}
	return out
}

// PoolsOf returns the storage pools of node id (all of them for id ""), never nil.
func PoolsOf(pools []quantix.InventoryPool, id string) []quantix.InventoryPool {
	out := []quantix.InventoryPool{}
	for _, p := range pools {
		if id == "" || strings.EqualFold(p.NodeID, id) {
			out = append(out, p)
		}
	}
	return out
}
