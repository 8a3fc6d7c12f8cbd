package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/quantix/quantix"
)

// The QvDC's database across an A/B upgrade (docs/design.md §16): a new release
// may migrate the schema, and the release before it refuses a schema newer than
// its own. So before PostgreSQL first starts on a trial boot, the cluster folder
// is copied, as it is (the server is not running; like a power cut, PostgreSQL
// recovers a copy of an unclean folder), to TrialSnapshotDir; a retry of the
// same trial keeps the copy taken before its first try. The next boot that is
// not a trial decides:
//   - it runs the release the copy was taken for: the trial was committed, the
//     copy is deleted;
//   - it runs another release: that trial failed and GRUB booted the old slot;
//     the cluster folder is set aside (TrialDiscardedDir, the latest one kept)
//     and the copy put back. What the vDC wrote during the failed trial is
//     discarded, and the service says so; nothing of the old release's data is
//     lost or mixed with the new schema.
//
// Each step is a rename on QUANTIX-DATA, and the copy is made under a temporary
// name: a power cut at any point leaves either the copy or the cluster whole,
// and the next start finishes the step.
const (
	snapshotName  = "postgresql-before-trial"
	discardedName = "postgresql-discarded-trial"
	snapshotInfo  = "snapshot.toml"
)

// Trial is what the service knows about the boot it runs in.
type Trial struct {
	// On is set on a trial boot (quantix.trial=1).
	On bool
	// Version is the running release (the image configuration's version).
	Version string
}

// TrialSnapshotDir is where the copy of the cluster taken before a trial lives.
func (s *Service) TrialSnapshotDir() string {
	return filepath.Join(s.cfg.DataRoot, "upgrade", snapshotName)
}

// TrialDiscardedDir is where a failed trial's cluster is set aside.
func (s *Service) TrialDiscardedDir() string {
	return filepath.Join(s.cfg.DataRoot, "upgrade", discardedName)
}

type snapshot struct {
	ForVersion string    `toml:"for_version"`
	At         time.Time `toml:"at"`
}

// guardTrial applies the rule above before the cluster is looked at. It
// returns what it did, for the log ("" when nothing).
func (s *Service) guardTrial(ctx context.Context) (string, error) {
	t := s.cfg.Trial
	if t.Version == "" {
		return "", nil
	}
	snap := s.TrialSnapshotDir()
	var info snapshot
	_, err := toml.DecodeFile(filepath.Join(snap, snapshotInfo), &info)
	have := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("trial snapshot %s: %w", snap, err)
	}
	if err := os.RemoveAll(snap + ".tmp"); err != nil { // a copy cut short
		return "", err
	}
	switch {
	case t.On && have && info.ForVersion == t.Version:
		return "trial retry: keeping the copy of the database taken before its first try", nil
	case t.On:
		if !exists(s.cfg.DataDir) {
			return "", nil // a first boot: nothing to keep
		}
		if err := s.stopLeftover(ctx); err != nil {
			return "", err
		}
		if err := os.RemoveAll(snap); err != nil {
			return "", err
		}
		t0 := time.Now()
		if err := copyTree(s.cfg.DataDir, filepath.Join(snap+".tmp", "data")); err != nil {
			return "", fmt.Errorf("copy the database before the trial of %s: %w", t.Version, err)
		}
		b, err := toml.Marshal(snapshot{ForVersion: t.Version, At: time.Now().UTC()})
		if err != nil {
			return "", err
		}
		if err := quantix.WriteFileAtomic(filepath.Join(snap+".tmp", snapshotInfo), b, 0o600); err != nil {
			return "", err
		}
		if err := renameSynced(snap+".tmp", snap); err != nil {
			return "", err
		}
		return fmt.Sprintf("trial of %s: copied the database to %s in %.1f s, to be put back if the trial fails", t.Version, snap, time.Since(t0).Seconds()), nil
	case !have:
		return "", nil
	case info.ForVersion == t.Version:
		if err := os.RemoveAll(snap); err != nil {
			return "", err
		}
		return fmt.Sprintf("the trial of %s was committed: removed the copy of the database taken before it", t.Version), nil
	default:
		if err := s.stopLeftover(ctx); err != nil {
			return "", err
		}
		discarded := s.TrialDiscardedDir()
		if err := os.RemoveAll(discarded); err != nil {
			return "", err
		}
		if exists(s.cfg.DataDir) {
			if err := renameSynced(s.cfg.DataDir, discarded); err != nil {
				return "", err
			}
		}
		if err := renameSynced(filepath.Join(snap, "data"), s.cfg.DataDir); err != nil {
			return "", err
		}
		if err := os.RemoveAll(snap); err != nil {
			return "", err
		}
		return fmt.Sprintf("the trial of %s failed and %s runs again: the database is back as it was before that trial (taken %s); what was written during the trial is discarded (kept in %s)",
			info.ForVersion, t.Version, info.At.Format(time.RFC3339), discarded), nil
	}
}

func renameSynced(from, to string) error {
	if err := os.Rename(from, to); err != nil {
		return err
	}
	return syncDir(filepath.Dir(to))
}

// copyTree copies the folder src to dst (which must not exist): files, folders
// and symlinks with their modes and owners, each file synced.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		st, _ := info.Sys().(*syscall.Stat_t)
		switch {
		case d.IsDir():
			if err := os.MkdirAll(to, info.Mode().Perm()); err != nil {
				return err
			}
			if err := os.Chmod(to, info.Mode().Perm()); err != nil {
				return err
			}
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, to); err != nil {
				return err
			}
			if st != nil {
				return os.Lchown(to, int(st.Uid), int(st.Gid))
			}
			return nil
		case d.Type().IsRegular():
			if err := copyFile(p, to, info.Mode().Perm()); err != nil {
				return err
			}
		default:
			return nil // sockets and the like are not part of a cluster at rest
		}
		if st != nil {
			return os.Chown(to, int(st.Uid), int(st.Gid))
		}
		return nil
	})
}

func copyFile(from, to string, perm os.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
