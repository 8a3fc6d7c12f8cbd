package vms

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
)

// ErrMismatch is wrapped when the bytes the vDC sent are not the size or the
// sha256 the desired state names: fetching again would bring the same.
var ErrMismatch = errors.New("mismatch")

// Fetch is one verified download from the vDC: a file whose size and sha256 are
// known beforehand (the desired state names them) goes into Dir under Name
// through a hidden part file, fsynced, and is renamed to Name only once both
// match; bytes that do not match are removed. Images and release bundles are
// fetched this way.
type Fetch struct {
	Dir, Name string
	Size      int64
	SHA256    string // lower-case hex
	// Resume keeps the part file (.<Name>.part) of a transfer that broke off and
	// continues it with a Range request the next time, also in a new process;
	// without it every failure removes what was written.
	Resume bool
	// Open opens the bytes from offset on: partial says the body starts at
	// offset, else it is the whole file; length is the body's, -1 when unknown.
	Open func(ctx context.Context, offset int64) (body io.ReadCloser, length int64, partial bool, err error)
}

// PartPath is where a resumable fetch keeps the bytes it has so far.
func (f Fetch) PartPath() string { return filepath.Join(f.Dir, "."+f.Name+".part") }

// Run downloads, verifies and renames the file into place (mode 0644: QEMU opens
// images as its own user).
func (f Fetch) Run(ctx context.Context) error {
	if err := os.MkdirAll(f.Dir, 0o755); err != nil {
		return fmt.Errorf("download: %w", err)
	}
	tmp, off, h, err := f.openPart()
	if err != nil {
		return fmt.Errorf("download: %w", err)
	}
	ok := false
	defer func() {
		tmp.Close()
		if !ok && !f.Resume {
			os.Remove(tmp.Name())
		}
	}()
	bad := func(err error) error {
		os.Remove(tmp.Name()) // these bytes are wrong, not only incomplete
		return err
	}
	if off < f.Size {
		body, length, partial, err := f.Open(ctx, off)
		if err != nil {
			if off == 0 {
				os.Remove(tmp.Name()) // nothing to resume
			}
			return fmt.Errorf("download: %w", err)
		}
		defer body.Close()
		if !partial && off > 0 {
			// The whole file came: start over.
			if off, h, err = 0, sha256.New(), tmp.Truncate(0); err != nil {
				return fmt.Errorf("download: %w", err)
			}
			if _, err := tmp.Seek(0, io.SeekStart); err != nil {
				return fmt.Errorf("download: %w", err)
			}
		}
		if length >= 0 && off+length != f.Size {
			return bad(fmt.Errorf("size %w: the vDC sends %d bytes, want %d", ErrMismatch, off+length, f.Size))
		}
		// One byte more than expected tells a longer body from an exact one.
		n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(body, f.Size-off+1))
		if serr := tmp.Sync(); err == nil {
			err = serr
		}
		if err != nil {
			return fmt.Errorf("download: broke off at %d of %d bytes: %w", off+n, f.Size, err)
		}
		if off+n != f.Size {
			return bad(fmt.Errorf("size %w: got %d bytes, want %d", ErrMismatch, off+n, f.Size))
		}
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != f.SHA256 {
		return bad(fmt.Errorf("sha256 %w: got %s, want %s", ErrMismatch, got, f.SHA256))
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("download: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(f.Dir, f.Name)); err != nil {
		return fmt.Errorf("download: %w", err)
	}
	ok = true
	return syncDir(f.Dir)
}

// openPart opens the file to write into: a fresh temp file, or the part file a
// resumable fetch left, positioned at its end and with its bytes hashed.
func (f Fetch) openPart() (*os.File, int64, hash.Hash, error) {
	h := sha256.New()
	if !f.Resume {
		tmp, err := os.CreateTemp(f.Dir, "."+f.Name+".part-")
		return tmp, 0, h, err
	}
	tmp, err := os.OpenFile(f.PartPath(), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, 0, nil, err
	}
	off, err := io.Copy(h, tmp)
	if err == nil && off > f.Size {
		// More than the file can hold: not a prefix of it.
		off, h, err = 0, sha256.New(), tmp.Truncate(0)
		if err == nil {
			_, err = tmp.Seek(0, io.SeekStart)
		}
	}
	if err != nil {
		tmp.Close()
		return nil, 0, nil, err
	}
	return tmp, off, h, nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("download: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("download: sync %s: %w", dir, err)
	}
	return nil
}
