package build

import (
	"bytes"
	"debug/buildinfo"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/modfile"
)

// Manifest lists every input of an image with its version and hash
// (out/<image>.manifest.json).
type Manifest struct {
	Image           string    `json:"image"`
	Version         string    `json:"version"`
	VolumeLabel     string    `json:"volume_label"`
	SourceDateEpoch int64     `json:"source_date_epoch"`
	ISO             FileInput `json:"iso"`
	Go              string    `json:"go"`
	// GoModules are the module requirements of the repository (go.mod) with their
	// go.sum hashes: everything a Go binary in the image may be built from.
	GoModules []GoModule      `json:"go_modules"`
	Kernel    KernelInput     `json:"kernel"`
	Modules   []FileInput     `json:"modules"`
	URoot     URootInput      `json:"uroot"`
	Commands  []CommandInput  `json:"commands"`
	Overlay   []FileInput     `json:"overlay"`
	HostFiles []HostFileInput `json:"host_files"`
	Boot      []FileInput     `json:"boot"`
	// Extensions are the squashfs images inside the initramfs; their files are
	// listed in HostFiles under the extension's mount point.
	Extensions []ExtensionInput `json:"extensions,omitempty"`
	Initramfs  InitramfsInfo    `json:"initramfs"`
	// TrustedKeys are the release keys the image accepts upgrade bundles from
	// (quantix.TrustedKeysPath); none means it accepts none unless a site adds
	// its own on QUANTIX-CFG.
	TrustedKeys []string `json:"trusted_keys"`
}

// KernelInput is the pinned kernel package.
type KernelInput struct {
	Package string `json:"package"`
	Version string `json:"version"`
	SHA256  string `json:"deb_sha256"`
	Release string `json:"release"`
}

// FileInput is one file with where it came from.
type FileInput struct {
	Path           string `json:"path"`
	Source         string `json:"source,omitempty"`
	SHA256         string `json:"sha256"`
	Size           int64  `json:"size,omitempty"`
	Package        string `json:"package,omitempty"`
	PackageVersion string `json:"package_version,omitempty"`
}

// HostFileInput is a host file copied into the initramfs.
type HostFileInput struct {
	Path           string `json:"path"`
	Source         string `json:"source"`
	SHA256         string `json:"sha256"`
	Package        string `json:"package"`
	PackageVersion string `json:"package_version"`
}

// URootInput is the u-root part of the initramfs.
type URootInput struct {
	Commands      []string   `json:"commands"`
	Uinit         string     `json:"uinit"`
	ArchiveSHA256 string     `json:"archive_sha256"`
	BusyboxSHA256 string     `json:"busybox_sha256"`
	GoModules     []GoModule `json:"go_modules"`
}

// CommandInput is one of our commands.
type CommandInput struct {
	Package   string     `json:"package"`
	Path      string     `json:"path"`
	SHA256    string     `json:"sha256"`
	GoModules []GoModule `json:"go_modules"`
}

// GoModule is a module compiled into a binary (from its build info).
type GoModule struct {
	Path    string `json:"path"`
	Version string `json:"version"`
	Sum     string `json:"sum,omitempty"`
}

// InitramfsInfo describes the initramfs written.
type InitramfsInfo struct {
	SHA256  string `json:"sha256"`
	Size    int64  `json:"size"`
	RawSize int64  `json:"raw_size"`
	Entries int    `json:"entries"`
}

func (m *Manifest) write(path string) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// binaryModules reads the Go module list from a binary's build info.
func binaryModules(bin []byte) ([]GoModule, error) {
	bi, err := buildinfo.Read(bytes.NewReader(bin))
	if err != nil {
		return nil, err
	}
	mods := []GoModule{{Path: bi.Main.Path, Version: bi.Main.Version}}
	for _, d := range bi.Deps {
		if d.Replace != nil {
			d = d.Replace
		}
		mods = append(mods, GoModule{Path: d.Path, Version: d.Version, Sum: d.Sum})
	}
	return mods, nil
}

// repoModules reads go.mod's requirements and their hashes from go.sum.
func repoModules(repo string) ([]GoModule, error) {
	data, err := os.ReadFile(filepath.Join(repo, "go.mod"))
	if err != nil {
		return nil, err
	}
	f, err := modfile.Parse("go.mod", data, nil)
	if err != nil {
		return nil, fmt.Errorf("go.mod: %w", err)
	}
	sums := map[string]string{}
	if sum, err := os.ReadFile(filepath.Join(repo, "go.sum")); err == nil {
		for _, l := range strings.Split(string(sum), "\n") {
			if fs := strings.Fields(l); len(fs) == 3 && !strings.HasSuffix(fs[1], "/go.mod") {
				sums[fs[0]+"@"+fs[1]] = fs[2]
			}
		}
	}
	var out []GoModule
	for _, r := range f.Require {
		out = append(out, GoModule{Path: r.Mod.Path, Version: r.Mod.Version, Sum: sums[r.Mod.Path+"@"+r.Mod.Version]})
	}
	return out, nil
}
