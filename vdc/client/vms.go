package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/quantix/quantix"
)

// This file calls the managed-VM and image API (docs/design.md §14).

// ManagedVMs returns the VMs the vDC created, wanted next to observed.
func (c *Client) ManagedVMs(ctx context.Context) ([]quantix.ManagedVM, error) {
	var l quantix.VMList
	err := c.do(ctx, http.MethodGet, quantix.PathVMs, nil, &l)
	return l.Managed, err
}

// CreateVM creates a managed VM.
func (c *Client) CreateVM(ctx context.Context, req quantix.VMCreate) (quantix.ManagedVM, error) {
	var vm quantix.ManagedVM
	err := c.do(ctx, http.MethodPost, quantix.PathVMs, req, &vm)
	return vm, err
}

// VM returns a managed VM by UUID or name.
func (c *Client) VM(ctx context.Context, ref string) (quantix.ManagedVM, error) {
	var vm quantix.ManagedVM
	err := c.do(ctx, http.MethodGet, quantix.PathVM(url.PathEscape(ref)), nil, &vm)
	return vm, err
}

// UpdateVM applies a JSON merge patch (an object of VMSpec fields) to a VM's spec.
func (c *Client) UpdateVM(ctx context.Context, ref string, patch map[string]any) (quantix.ManagedVM, error) {
	var vm quantix.ManagedVM
	err := c.do(ctx, http.MethodPatch, quantix.PathVM(url.PathEscape(ref)), patch, &vm)
	return vm, err
}

// VMAction asks for a power action (quantix.VMAction*).
func (c *Client) VMAction(ctx context.Context, ref, action string) (quantix.ManagedVM, error) {
	var vm quantix.ManagedVM
	err := c.do(ctx, http.MethodPost, quantix.PathVMAction(url.PathEscape(ref)), quantix.VMActionRequest{Action: action}, &vm)
	return vm, err
}

// DeleteVM deletes a managed VM, with its disks unless keepDisks.
func (c *Client) DeleteVM(ctx context.Context, ref string, keepDisks bool) error {
	p := quantix.PathVM(url.PathEscape(ref))
	if keepDisks {
		p += "?keep_disks=1"
	}
	return c.do(ctx, http.MethodDelete, p, nil, nil)
}

// VMConsole returns the newest serial console output of a VM.
func (c *Client) VMConsole(ctx context.Context, ref string) ([]byte, error) {
	_, b, err := c.roundTrip(ctx, http.MethodGet, quantix.PathVMConsole(url.PathEscape(ref)), c.token, nil)
	return b, err
}

// VMEvents returns a VM's history.
func (c *Client) VMEvents(ctx context.Context, ref string) ([]quantix.VMEvent, error) {
	var l quantix.VMEventList
	err := c.do(ctx, http.MethodGet, quantix.PathVMEvents(url.PathEscape(ref)), nil, &l)
	return l.Events, err
}

// Images returns the image library.
func (c *Client) Images(ctx context.Context) ([]quantix.Image, error) {
	var l quantix.ImageList
	err := c.do(ctx, http.MethodGet, quantix.PathImages, nil, &l)
	return l.Images, err
}

// DeleteImage deletes an image (by id or name) no VM uses.
func (c *Client) DeleteImage(ctx context.Context, ref string) error {
	return c.do(ctx, http.MethodDelete, quantix.PathImage(url.PathEscape(ref)), nil, nil)
}

// UploadImage streams size bytes of body as a new image; sha256 (hex, optional)
// makes the vDC refuse bytes that do not match.
func (c *Client) UploadImage(ctx context.Context, name, format, sha256 string, size int64, body io.Reader) (quantix.Image, error) {
	q := url.Values{"name": {name}, "format": {format}}
	if sha256 != "" {
		q.Set("sha256", sha256)
	}
	p := quantix.PathImages + "?" + q.Encode()
	_, b, err := c.roundTripType(ctx, http.MethodPost, p, c.token, "application/octet-stream", size, body)
	var img quantix.Image
	if err != nil {
		return img, err
	}
	if err := json.Unmarshal(b, &img); err != nil {
		return img, fmt.Errorf("POST %s: decode answer: %w", quantix.PathImages, err)
	}
	return img, nil
}

// Desired fetches a node's desired state with its secret (the agent channel);
// after and wait > 0 make it a long-poll.
func (c *Client) Desired(ctx context.Context, nodeID, secret string, after int64, wait int) (quantix.NodeDesired, error) {
	p := quantix.PathDesired(url.PathEscape(nodeID))
	if wait > 0 {
		p += "?after=" + strconv.FormatInt(after, 10) + "&wait=" + strconv.Itoa(wait)
	}
	var d quantix.NodeDesired
	_, err := c.send(ctx, http.MethodGet, p, secret, nil, &d)
	return d, err
}
