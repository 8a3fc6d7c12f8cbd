package nodeos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent/vms"
)

// download fetches the order's files into dir, each checked against the order's
// size and sha256. A file already there is checked again; a transfer that broke
// off, also in an earlier agent, resumes where it stopped.
func (u *Upgrader) download(ctx context.Context, order *quantix.DesiredUpgrade, dir string) error {
	if err := u.removeStrays(order, dir); err != nil {
		return err
	}
	for _, rf := range order.Files {
		want := strings.ToLower(rf.SHA256)
		path := filepath.Join(dir, rf.Name)
		if fi, err := os.Stat(path); err == nil {
			if fi.Size() == rf.SizeBytes {
				if sum, err := quantix.FileSHA256(path); err == nil && sum == want {
					continue
				}
			}
			os.Remove(path)
		}
		f := vms.Fetch{Dir: dir, Name: rf.Name, Size: rf.SizeBytes, SHA256: want, Resume: true,
			Open: func(ctx context.Context, offset int64) (io.ReadCloser, int64, bool, error) {
				return u.cfg.Fetcher.ReleaseFile(ctx, order.Release, rf.Name, offset)
			}}
		u.log.Info("downloading release file", "release", order.Release, "file", rf.Name, "size_bytes", rf.SizeBytes)
		_, perr := os.Stat(f.PartPath())
		err := f.Run(ctx)
		if errors.Is(err, vms.ErrMismatch) && perr == nil {
			// The part an earlier transfer left was not the start of this file
			// (Run removed it): once more, whole.
			u.log.Warn("resumed download did not match; fetching the file whole", "release", order.Release, "file", rf.Name, "err", err)
			err = f.Run(ctx)
		}
		if err != nil {
			return fmt.Errorf("release %s file %s: %w", order.Release, rf.Name, err)
		}
	}
	return nil
}

// removeStrays removes what the bundle folder holds besides the order's files and
// their part files, so init stages exactly what the order names.
func (u *Upgrader) removeStrays(order *quantix.DesiredUpgrade, dir string) error {
	es, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("bundle folder: %w", err)
	}
	var keep []string
	for _, f := range order.Files {
		keep = append(keep, f.Name, filepath.Base(vms.Fetch{Dir: dir, Name: f.Name}.PartPath()))
	}
	for _, e := range es {
		if !slices.Contains(keep, e.Name()) {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("bundle folder: %w", err)
			}
		}
	}
	return nil
}

// checkSpace refuses an order whose files do not fit on QUANTIX-DATA with
// spaceMargin to spare.
func (u *Upgrader) checkSpace(order *quantix.DesiredUpgrade) error {
	dir := u.bundleDir(order.Release)
	var need int64
	for _, f := range order.Files {
		have := int64(0)
		for _, p := range []string{filepath.Join(dir, f.Name), vms.Fetch{Dir: dir, Name: f.Name}.PartPath()} {
			if fi, err := os.Stat(p); err == nil && fi.Size() <= f.SizeBytes {
				have = max(have, fi.Size())
			}
		}
		need += f.SizeBytes - have
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(u.cfg.DataDir, &fs); err != nil {
		return fmt.Errorf("free space on %s: %w", u.cfg.DataDir, err)
	}
	free := int64(fs.Bavail) * fs.Bsize
	if free < need+spaceMargin {
		return fmt.Errorf("%s has %d MiB free; release %s needs %d MiB more and %d MiB to spare: free space on QUANTIX-DATA (unused images, VM disks)",
			u.cfg.DataDir, free>>20, order.Release, (need+(1<<20)-1)>>20, spaceMargin>>20)
	}
	return nil
}
