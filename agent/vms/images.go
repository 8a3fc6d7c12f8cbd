package vms

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/quantix/quantix"
)

var imageIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Cache holds verified copies of vDC images in one folder (ImageCacheDir on
// Quantix-OS): <id> is an image whose size and sha256 matched what the vDC said.
// A download goes to a hidden temporary file first, so a crash or a mismatch never
// leaves a file under the image's name.
type Cache struct {
	dir string
	ch  *Channel

	mu       sync.Mutex
	verified map[string]string // id -> sha256 checked by this process
}

// NewCache returns the cache in dir; the folder is made at the first download.
func NewCache(dir string, ch *Channel) *Cache {
	return &Cache{dir: dir, ch: ch, verified: map[string]string{}}
}

// Path is where image id is (or would be) cached.
func (c *Cache) Path(id string) string { return filepath.Join(c.dir, id) }

// Ensure returns the path of a verified copy of img, downloading it when it is
// not cached yet. A cached file is re-hashed once per agent process.
func (c *Cache) Ensure(ctx context.Context, img quantix.DesiredImage) (string, error) {
	if !imageIDRE.MatchString(img.ID) {
		return "", fmt.Errorf("image %q: not a valid image id", img.ID)
	}
	want := strings.ToLower(img.SHA256)
	if len(want) != 64 {
		return "", fmt.Errorf("image %s: the vDC sent no valid sha256 (%q)", img.ID, img.SHA256)
	}
	path := c.Path(img.ID)
	c.mu.Lock()
	ok := c.verified[img.ID] == want
	c.mu.Unlock()
	if fi, err := os.Stat(path); err == nil {
		if ok && fi.Size() == img.SizeBytes {
			return path, nil
		}
		if fi.Size() == img.SizeBytes {
			if sum, err := quantix.FileSHA256(path); err == nil && sum == want {
				c.remember(img.ID, want)
				return path, nil
			}
		}
		// Not the bytes the vDC means now (changed, or damaged): fetch again.
		os.Remove(path)
	}
	if err := c.download(ctx, img, want); err != nil {
		return "", err
	}
	c.remember(img.ID, want)
	return path, nil
}

func (c *Cache) remember(id, sum string) {
	c.mu.Lock()
	c.verified[id] = sum
	c.mu.Unlock()
}

func (c *Cache) download(ctx context.Context, img quantix.DesiredImage, want string) error {
	f := Fetch{Dir: c.dir, Name: img.ID, Size: img.SizeBytes, SHA256: want,
		Open: func(ctx context.Context, _ int64) (io.ReadCloser, int64, bool, error) {
			body, length, err := c.ch.Image(ctx, img.ID)
			return body, length, false, err
		}}
	if err := f.Run(ctx); err != nil {
		return fmt.Errorf("image %s: %w", img.ID, err)
	}
	return nil
}

// qcow2VirtualSize reads the guest-visible size from a qcow2 header (magic
// "QFI\xfb", the size at offset 24, big-endian).
func qcow2VirtualSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var hdr [32]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil {
		return 0, fmt.Errorf("qcow2 header of %s: %w", path, err)
	}
	if string(hdr[:4]) != "QFI\xfb" {
		return 0, fmt.Errorf("%s is not a qcow2 image", path)
	}
	return int64(binary.BigEndian.Uint64(hdr[24:32])), nil
}
