package quantix

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// MountInfo is the kernel's mount table of this process.
const MountInfo = "/proc/self/mountinfo"

// MountFacts is what mountinfo says about one folder.
type MountFacts struct {
	// Mounted: the folder is a mount point. Source and FSType describe the mount.
	Mounted        bool
	Source, FSType string
}

// Persistent reports whether the mount keeps data across a reboot: a filesystem on
// a device, not a RAM filesystem.
func (m MountFacts) Persistent() bool {
	if !m.Mounted || !strings.HasPrefix(m.Source, "/dev/") {
		return false
	}
	switch m.FSType {
	case "tmpfs", "ramfs", "rootfs", "devtmpfs", "proc", "sysfs", "overlay", "squashfs", "iso9660":
		return false
	}
	return true
}

// ReadMountFacts reads the mount table (path, normally MountInfo) for dir.
func ReadMountFacts(path, dir string) (MountFacts, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return MountFacts{}, fmt.Errorf("mount table: %w", err)
	}
	return ParseMountInfo(data, dir), nil
}

// ParseMountInfo finds dir in the text of /proc/self/mountinfo. The last mount on
// dir wins, as it hides the earlier ones.
func ParseMountInfo(mountinfo []byte, dir string) MountFacts {
	dir = filepath.Clean(dir)
	var m MountFacts
	for _, line := range strings.Split(string(mountinfo), "\n") {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 2 || unescapeMount(pf[4]) != dir {
			continue
		}
		m = MountFacts{Mounted: true, FSType: qf[0], Source: unescapeMount(qf[1])}
	}
	return m
}

// unescapeMount undoes the octal escapes (\040 for a space) of mountinfo fields.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
