package postgres

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// ClusterFacts is what Run observes about the data folder before deciding.
type ClusterFacts struct {
	Path string
	// Exists: the path exists. NotDir: it exists but is not a folder.
	Exists, NotDir bool
	// Entries are the names in the folder, sorted.
	Entries []string
	// PGVersion is the trimmed content of PG_VERSION; HasPGVersion says the file is there.
	PGVersion    string
	HasPGVersion bool
}

// ClusterAction is what to do with the data folder.
type ClusterAction int

// The actions DecideCluster picks.
const (
	ClusterRefuse ClusterAction = iota // never touch it: the error says why and what to do
	ClusterInit                        // absent or empty: initdb
	ClusterUse                         // a cluster of the binaries' major version: start it
)

func (a ClusterAction) String() string {
	switch a {
	case ClusterInit:
		return "initdb"
	case ClusterUse:
		return "use"
	default:
		return "refuse"
	}
}

// ObserveCluster gathers ClusterFacts about path without changing anything.
func ObserveCluster(path string) (ClusterFacts, error) {
	f := ClusterFacts{Path: path}
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return f, fmt.Errorf("inspect data folder %s: %w", path, err)
	}
	f.Exists = true
	if !st.IsDir() {
		f.NotDir = true
		return f, nil
	}
	ents, err := os.ReadDir(path)
	if err != nil {
		return f, fmt.Errorf("inspect data folder %s: %w", path, err)
	}
	for _, e := range ents {
		f.Entries = append(f.Entries, e.Name())
	}
	sort.Strings(f.Entries)
	b, err := os.ReadFile(filepath.Join(path, "PG_VERSION"))
	switch {
	case err == nil:
		f.HasPGVersion = true
		f.PGVersion = strings.TrimSpace(string(b))
	case errors.Is(err, fs.ErrNotExist):
	default:
		return f, fmt.Errorf("inspect data folder %s: %w", path, err)
	}
	return f, nil
}

// DecideCluster decides, from the facts alone, what to do with the data folder for
// binaries of major version binMajor. It never chooses to overwrite anything: an
// absent or empty folder gets initdb, a cluster of binMajor is used, and everything
// else is refused with an error (wrapping quantix.ErrConfig) naming what was found and what
// the operator can do.
func DecideCluster(f ClusterFacts, binMajor string) (ClusterAction, error) {
	switch {
	case !f.Exists:
		return ClusterInit, nil
	case f.NotDir:
		return ClusterRefuse, configErrorf("data folder %s is a file, not a folder: move it away", f.Path)
	case len(f.Entries) == 0:
		return ClusterInit, nil
	case !f.HasPGVersion:
		return ClusterRefuse, configErrorf("data folder %s holds files that are not a PostgreSQL cluster (%s): refusing to touch them; move them away or set data_dir to an empty folder", f.Path, listSome(f.Entries, 5))
	case !isMajor(f.PGVersion):
		return ClusterRefuse, configErrorf("data folder %s has a PG_VERSION of %q, not a PostgreSQL major version: refusing to touch it; move it away or restore it from a backup", f.Path, f.PGVersion)
	case f.PGVersion != binMajor:
		return ClusterRefuse, configErrorf("data folder %s holds a PostgreSQL %s cluster but this appliance runs PostgreSQL %s: it will not be touched; upgrade it with pg_upgrade from %s to %s (or dump it with PostgreSQL %s and restore), or move it away to start an empty database", f.Path, f.PGVersion, binMajor, f.PGVersion, binMajor, f.PGVersion)
	}
	for _, need := range []string{"global", "base", "pg_wal"} {
		if !contains(f.Entries, need) {
			return ClusterRefuse, configErrorf("data folder %s says PostgreSQL %s but has no %s/: an incomplete or damaged cluster; restore it from a backup or move it away to start an empty database", f.Path, f.PGVersion, need)
		}
	}
	return ClusterUse, nil
}

func isMajor(s string) bool {
	if s == "" || len(s) > 3 || s[0] == '0' {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func listSome(names []string, n int) string {
	if len(names) <= n {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:n], ", "), len(names)-n)
}

// DiskFacts is what PrepareDataDisk observes about block devices.
type DiskFacts struct {
	// Labelled are the devices holding a filesystem labelled QUANTIX-DATA.
	Labelled []string
	// Configured is the explicitly configured device ("" when none).
	Configured string
	// ConfiguredMissing: the configured device does not exist.
	ConfiguredMissing bool
	// ConfiguredContent describes what the configured device holds; "" means blank.
	ConfiguredContent string
	// FormatAllowed is the format_blank_data setting.
	FormatAllowed bool
}

// DiskAction is what to do about QUANTIX-DATA.
type DiskAction int

// The actions DecideDisk picks.
const (
	DiskRefuse DiskAction = iota // the error says why
	DiskNone                     // no data disk: the database lives in RAM
	DiskUse                      // a QUANTIX-DATA filesystem exists: mount it by label
	DiskFormat                   // format the blank configured device as QUANTIX-DATA
)

func (a DiskAction) String() string {
	switch a {
	case DiskNone:
		return "none"
	case DiskUse:
		return "use"
	case DiskFormat:
		return "format"
	default:
		return "refuse"
	}
}

// DecideDisk decides, from the facts alone, what to do about QUANTIX-DATA. It returns
// the device to use or format. A device holding anything but zeros at its start and
// end is never formatted.
func DecideDisk(f DiskFacts) (DiskAction, string, error) {
	switch {
	case len(f.Labelled) > 1:
		return DiskRefuse, "", configErrorf("%d filesystems are labelled QUANTIX-DATA (%s): remove or relabel all but one", len(f.Labelled), strings.Join(f.Labelled, ", "))
	case len(f.Labelled) == 1:
		return DiskUse, f.Labelled[0], nil
	case f.Configured == "":
		return DiskNone, "", nil
	case f.ConfiguredMissing:
		return DiskRefuse, "", configErrorf("data_device %s does not exist", f.Configured)
	case f.ConfiguredContent != "":
		return DiskRefuse, "", configErrorf("data_device %s is not blank (%s): refusing to format a disk holding foreign data; wipe it yourself if it is really unused, or label its ext4 filesystem QUANTIX-DATA", f.Configured, f.ConfiguredContent)
	case !f.FormatAllowed:
		return DiskRefuse, "", configErrorf("data_device %s is blank but format_blank_data is false: set format_blank_data = true to format it as QUANTIX-DATA", f.Configured)
	}
	return DiskFormat, f.Configured, nil
}
