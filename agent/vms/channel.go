package vms

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quantix/quantix"
)

// ErrNotRegistered is returned by a Channel before the agent has a node id.
var ErrNotRegistered = errors.New("node not registered with the vDC yet")

// Channel is the reconciler's side of the agent channel (docs/design.md §14): the
// desired long-poll, image and release downloads and console uploads, to the same vDC and
// with the same node secret as the agent's heartbeats.
type Channel struct {
	base func() string // the vDC in use (the agent moves between several)
	http *http.Client
	// requestTimeout bounds a short request; a long-poll gets its wait on top.
	requestTimeout time.Duration

	mu           sync.Mutex
	node, secret string
	nodeChanged  chan struct{}
}

// NewChannel makes a Channel to the vDC base returns (a URL without a trailing
// slash, asked for each request). hc must not have a Timeout of
// its own (a long-poll is held for up to MaxDesiredWait); requests are bounded by
// their contexts and requestTimeout.
func NewChannel(base func() string, hc *http.Client, requestTimeout time.Duration) *Channel {
	if requestTimeout <= 0 {
		requestTimeout = 15 * time.Second
	}
	return &Channel{base: base, http: hc, requestTimeout: requestTimeout, nodeChanged: make(chan struct{})}
}

// SetNode sets the node id and secret (after a registration); an empty id stops
// the channel until the next registration.
func (c *Channel) SetNode(id, secret string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if id == c.node && secret == c.secret {
		return
	}
	c.node, c.secret = id, secret
	close(c.nodeChanged)
	c.nodeChanged = make(chan struct{})
}

// Node is the current node id and a channel closed when it changes.
func (c *Channel) Node() (string, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.node, c.nodeChanged
}

func (c *Channel) auth() (string, string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.node == "" {
		return "", "", ErrNotRegistered
	}
	return c.node, c.secret, nil
}

// StatusError is a non-2xx answer of the vDC on the agent channel.
type StatusError struct {
	Op      string
	Status  int
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s: vDC answered %d %s: %s", e.Op, e.Status, http.StatusText(e.Status), e.Message)
}

// send makes one request with the node secret; hdr adds headers (nil: none).
func (c *Channel) send(ctx context.Context, op, method, path, secret, ctype string, body []byte, hdr http.Header) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base()+path, rd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	req.Header.Set("User-Agent", "qx-node/"+quantix.Version)
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		defer resp.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		msg := strings.TrimSpace(string(data))
		var e quantix.Error
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return nil, &StatusError{Op: op, Status: resp.StatusCode, Message: msg}
	}
	return resp, nil
}

// Desired fetches the node's desired state; with wait > 0 it is the long-poll that
// returns as soon as the generation differs from after (or after wait).
func (c *Channel) Desired(ctx context.Context, after int64, wait time.Duration) (quantix.NodeDesired, error) {
	node, secret, err := c.auth()
	if err != nil {
		return quantix.NodeDesired{}, err
	}
	secs := min(int(wait/time.Second), quantix.MaxDesiredWait)
	path := quantix.PathDesired(node)
	if secs > 0 {
		path += "?after=" + strconv.FormatInt(after, 10) + "&wait=" + strconv.Itoa(secs)
	}
	ctx, cancel := context.WithTimeout(ctx, c.requestTimeout+time.Duration(secs)*time.Second)
	defer cancel()
	resp, err := c.send(ctx, "desired", http.MethodGet, path, secret, "", nil, nil)
	if err != nil {
		return quantix.NodeDesired{}, err
	}
	defer resp.Body.Close()
	var d quantix.NodeDesired
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&d); err != nil {
		return quantix.NodeDesired{}, fmt.Errorf("desired: decode answer: %w", err)
	}
	return d, nil
}

// Image opens the bytes of an image; the caller closes the body. Only the
// response headers are bounded by the request timeout: the body takes as long as
// it takes, within ctx.
func (c *Channel) Image(ctx context.Context, id string) (io.ReadCloser, int64, error) {
	node, secret, err := c.auth()
	if err != nil {
		return nil, 0, err
	}
	body, length, _, err := c.open(ctx, "image "+id, quantix.PathNodeImage(node, id), secret, 0)
	return body, length, err
}

// ReleaseFile opens a file of a release bundle (quantix.PathNodeRelease) from
// offset on: partial is true when the vDC answered the range (206) and the body
// starts there; otherwise it is the whole file. length is the body's, -1 when
// unknown. The caller closes the body; timing as Image.
func (c *Channel) ReleaseFile(ctx context.Context, release, name string, offset int64) (body io.ReadCloser, length int64, partial bool, err error) {
	node, secret, err := c.auth()
	if err != nil {
		return nil, 0, false, err
	}
	return c.open(ctx, "release "+release+" "+name, quantix.PathNodeRelease(node, release, name), secret, offset)
}

// open GETs path for a download, from offset on when offset > 0 (a Range
// request): only the wait for the response headers is bounded by the request
// timeout.
func (c *Channel) open(ctx context.Context, op, path, secret string, offset int64) (io.ReadCloser, int64, bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	t := time.AfterFunc(c.requestTimeout, cancel)
	var hdr http.Header
	if offset > 0 {
		hdr = http.Header{"Range": {"bytes=" + strconv.FormatInt(offset, 10) + "-"}}
	}
	resp, err := c.send(ctx, op, http.MethodGet, path, secret, "", nil, hdr)
	if !t.Stop() || err != nil {
		cancel()
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("%s: no answer within %v", op, c.requestTimeout)
		}
		return nil, 0, false, err
	}
	return &cancelBody{ReadCloser: resp.Body, cancel: cancel}, resp.ContentLength, resp.StatusCode == http.StatusPartialContent, nil
}

type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error { err := b.ReadCloser.Close(); b.cancel(); return err }

// PutConsole sends a VM's console tail (at most MaxConsoleBytes, the newest).
func (c *Channel) PutConsole(ctx context.Context, vmUUID string, tail []byte) error {
	node, secret, err := c.auth()
	if err != nil {
		return err
	}
	if len(tail) > quantix.MaxConsoleBytes {
		tail = tail[len(tail)-quantix.MaxConsoleBytes:]
	}
	ctx, cancel := context.WithTimeout(ctx, c.requestTimeout)
	defer cancel()
	resp, err := c.send(ctx, "console "+vmUUID, http.MethodPut, quantix.PathNodeConsole(node, vmUUID), secret, "application/octet-stream", tail, nil)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	return resp.Body.Close()
}
