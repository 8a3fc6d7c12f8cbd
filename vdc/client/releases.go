package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/quantix/quantix"
)

// This file is the release and rolling-upgrade part of the admin API
// (docs/design.md §16, upgrades.go).

// Releases returns the uploaded releases, newest first.
func (c *Client) Releases(ctx context.Context) ([]quantix.Release, error) {
	var l quantix.ReleaseList
	err := c.do(ctx, http.MethodGet, quantix.PathReleases, nil, &l)
	return l.Releases, err
}

// Release returns one release by id or <image>-<version>.
func (c *Client) Release(ctx context.Context, ref string) (quantix.Release, error) {
	var r quantix.Release
	err := c.do(ctx, http.MethodGet, quantix.PathRelease(url.PathEscape(ref)), nil, &r)
	return r, err
}

// DeleteRelease deletes a release no running upgrade uses.
func (c *Client) DeleteRelease(ctx context.Context, ref string) error {
	return c.do(ctx, http.MethodDelete, quantix.PathRelease(url.PathEscape(ref)), nil, nil)
}

// BundleUpload is a release bundle's files as one multipart body of known length,
// streamed from the files.
type BundleUpload struct {
	Body  io.Reader
	Size  int64
	Type  string // the Content-Type with its boundary
	files []*os.File
}

// Close closes the bundle's files.
func (b *BundleUpload) Close() {
	for _, f := range b.files {
		f.Close()
	}
}

// OpenBundle prepares the upload of the files of a bundle folder: <image>.iso,
// <image>.manifest.json, SHA256SUMS and SHA256SUMS.sig (others are left out).
func OpenBundle(dir string) (*BundleUpload, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("release bundle: %w", err)
	}
	var head bytes.Buffer
	mw := multipart.NewWriter(&head)
	b := &BundleUpload{Type: mw.FormDataContentType()}
	var parts []io.Reader
	for _, e := range ents {
		n := e.Name()
		if !e.Type().IsRegular() || !(n == quantix.BundleSums || n == quantix.BundleSignature ||
			strings.HasSuffix(n, ".iso") || strings.HasSuffix(n, ".manifest.json")) {
			continue
		}
		f, err := os.Open(filepath.Join(dir, n))
		if err != nil {
			b.Close()
			return nil, fmt.Errorf("release bundle: %w", err)
		}
		b.files = append(b.files, f)
		st, err := f.Stat()
		if err != nil {
			b.Close()
			return nil, fmt.Errorf("release bundle: %w", err)
		}
		if _, err := mw.CreateFormFile("file", n); err != nil {
			b.Close()
			return nil, err
		}
		// The part's header, then the file itself.
		parts = append(parts, bytes.NewReader(bytes.Clone(head.Bytes())), f)
		b.Size += int64(head.Len()) + st.Size()
		head.Reset()
	}
	mw.Close()
	parts = append(parts, bytes.NewReader(bytes.Clone(head.Bytes())))
	b.Size += int64(head.Len())
	b.Body = io.MultiReader(parts...)
	return b, nil
}

// UploadRelease sends a bundle (OpenBundle; body may wrap b.Body for progress).
// The vDC verifies it against its trusted keys before it keeps anything.
func (c *Client) UploadRelease(ctx context.Context, b *BundleUpload, body io.Reader) (quantix.Release, error) {
	_, data, err := c.roundTripType(ctx, http.MethodPost, quantix.PathReleases, c.token, b.Type, b.Size, body)
	var r quantix.Release
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("POST %s: decode answer: %w", quantix.PathReleases, err)
	}
	return r, nil
}

// StartUpgrade starts a rolling upgrade.
func (c *Client) StartUpgrade(ctx context.Context, req quantix.UpgradeRequest) (quantix.Upgrade, error) {
	var u quantix.Upgrade
	err := c.do(ctx, http.MethodPost, quantix.PathUpgrades, req, &u)
	return u, err
}

// Upgrades returns the rolling upgrades, newest first.
func (c *Client) Upgrades(ctx context.Context) ([]quantix.Upgrade, error) {
	var l quantix.UpgradeList
	err := c.do(ctx, http.MethodGet, quantix.PathUpgrades, nil, &l)
	return l.Upgrades, err
}

// Upgrade returns one rolling upgrade.
func (c *Client) Upgrade(ctx context.Context, id string) (quantix.Upgrade, error) {
	var u quantix.Upgrade
	err := c.do(ctx, http.MethodGet, quantix.PathUpgrade(url.PathEscape(id)), nil, &u)
	return u, err
}

// CancelUpgrade cancels a running upgrade.
func (c *Client) CancelUpgrade(ctx context.Context, id string) (quantix.Upgrade, error) {
	var u quantix.Upgrade
	err := c.do(ctx, http.MethodPost, quantix.PathUpgrade(url.PathEscape(id))+"/cancel", nil, &u)
	return u, err
}

// Controller returns the operating system of the vDC that answers.
func (c *Client) Controller(ctx context.Context) (quantix.ControllerOS, error) {
	var o quantix.ControllerOS
	err := c.do(ctx, http.MethodGet, quantix.PathController, nil, &o)
	return o, err
}

// UpgradeController has the vDC that answers stage a qvdc release into its
// other slot and, with req.Activate, reboot into it.
func (c *Client) UpgradeController(ctx context.Context, req quantix.ControllerUpgradeRequest) (quantix.ControllerUpgrade, error) {
	var u quantix.ControllerUpgrade
	err := c.do(ctx, http.MethodPost, quantix.PathControllerUpgrade, req, &u)
	return u, err
}
