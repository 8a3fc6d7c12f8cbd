package installer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"strconv"
	"strings"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"golang.org/x/sys/unix"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer/bootenv"
)

// Job is one disk write.
type Job struct {
	Plan   Plan
	Target string // the disk: a block device or an image file
	Source *Source
	Config ConfigFiles
	// Title is the boot menu title ("Quantix OS"); Cmdline the installed system's
	// kernel command line (InstalledCmdline).
	Title, Cmdline string
	// Image and Version name what slot a holds (its manifest).
	Image, Version string
	// Mkfs is the mkfs.ext4 program (default "mkfs.ext4" from PATH).
	Mkfs string
}

// State says how a failed write left the disk, for the operator.
type State string

// Disk states after a failure.
const (
	StateUntouched  State = "untouched"
	StateBlank      State = "blank: its partition table and first and last MiB were cleared, nothing boots or mounts it"
	StateIncomplete State = "marked incomplete: INSTALL-INCOMPLETE is on QUANTIX-EFI and the boot menu refuses to boot it"
)

// WriteError is a failed write with the state of the disk.
type WriteError struct {
	Step  string
	State State
	Err   error
}

func (e *WriteError) Error() string {
	return fmt.Sprintf("%s: %v (the disk is %s)", e.Step, e.Err, e.State)
}
func (e *WriteError) Unwrap() error { return e.Err }

// Step is a timed step of the install, for the summary.
type Step struct {
	Name string
	Took time.Duration
}

// Writer writes a Job to its disk.
type Writer struct {
	job   Job
	log   *slog.Logger
	state State
	Steps []Step
}

// NewWriter checks the job and returns a writer.
func NewWriter(job Job, log *slog.Logger) (*Writer, error) {
	if job.Source == nil || len(job.Plan.Parts) != 4 {
		return nil, errors.New("write: job needs a source and a four-partition plan")
	}
	if job.Mkfs == "" {
		job.Mkfs = "mkfs.ext4"
	}
	if _, err := exec.LookPath(job.Mkfs); err != nil {
		return nil, fmt.Errorf("write: %s not found: the image must ship mkfs.ext4 (e2fsprogs); on a host run make deps (apt-get install e2fsprogs)", job.Mkfs)
	}
	return &Writer{job: job, log: log, state: StateUntouched}, nil
}

func (w *Writer) step(name string, fn func() error) error {
	t0 := time.Now()
	w.log.Info("install step", "step", name)
	if err := fn(); err != nil {
		return &WriteError{Step: name, State: w.state, Err: err}
	}
	d := time.Since(t0)
	w.Steps = append(w.Steps, Step{name, d})
	w.log.Info("install step done", "step", name, "took", d.Round(time.Millisecond))
	return nil
}

// Write writes the plan: clear the disk's ends, QUANTIX-EFI with the marker,
// bootloaders, kernel and initramfs, core.img, QUANTIX-CFG with the configuration,
// QUANTIX-DATA, and last the GPT and the MBR boot code. The marker stays until
// Finish.
func (w *Writer) Write() error {
	j := w.job
	p := j.Plan
	f, err := os.OpenFile(j.Target, os.O_RDWR, 0)
	if err != nil {
		return &WriteError{Step: "open", State: StateUntouched, Err: err}
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return &WriteError{Step: "open", State: StateUntouched, Err: err}
	}
	if size != p.DiskSize {
		return &WriteError{Step: "open", State: StateUntouched, Err: fmt.Errorf("%s is %d bytes, the plan is for %d", j.Target, size, p.DiskSize)}
	}

	if err := w.step("clear partition table", func() error {
		w.state = StateBlank // from the first byte written on
		zero := make([]byte, MiB)
		if _, err := f.WriteAt(zero, 0); err != nil {
			return err
		}
		if _, err := f.WriteAt(zero, size-MiB); err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return err
		}
		rereadPartitions(f)
		return nil
	}); err != nil {
		return err
	}

	d, err := diskfs.Open(j.Target, diskfs.WithOpenMode(diskfs.ReadWrite))
	if err != nil {
		return &WriteError{Step: "open", State: w.state, Err: err}
	}
	defer d.Close()
	// The filesystems are made through the planned table before it is on the disk.
	d.Table = p.Table()

	esp := p.Part(quantix.LabelEFI)
	if err := w.step("QUANTIX-EFI (FAT32): bootloaders, slot a (kernel, initramfs), slot environment", func() error {
		fsys, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: esp.Number, FSType: filesystem.TypeFat32, VolumeLabel: quantix.LabelEFI})
		if err != nil {
			return fmt.Errorf("mkfs vfat: %w", err)
		}
		files, err := j.espFiles()
		if err != nil {
			return err
		}
		if err := writeESPFiles(fsys, files); err != nil {
			return err
		}
		return fixFAT(f, esp.Start)
	}); err != nil {
		return err
	}

	bios := p.Part(BIOSBootName)
	if err := w.step("BIOS boot partition: GRUB core.img", func() error {
		core, err := PatchCore(j.Source.Core, uint64(bios.Start/p.SectorSize))
		if err != nil {
			return err
		}
		if int64(len(core)) > bios.Size {
			return fmt.Errorf("core.img is %d bytes; the BIOS boot partition holds %d", len(core), bios.Size)
		}
		buf := make([]byte, bios.Size)
		copy(buf, core)
		_, err = f.WriteAt(buf, bios.Start)
		return err
	}); err != nil {
		return err
	}

	cfg := p.Part(quantix.LabelConfig)
	if err := w.step("QUANTIX-CFG (ext4): configuration", func() error {
		fsys, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: cfg.Number, FSType: filesystem.TypeExt4, VolumeLabel: quantix.LabelConfig})
		if err != nil {
			return fmt.Errorf("mkfs ext4: %w", err)
		}
		for _, name := range j.Config.Names() {
			if err := writeExt4(fsys, name, j.Config[name]); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}

	data := p.Part(quantix.LabelData)
	if err := w.step("QUANTIX-DATA (ext4, mkfs.ext4)", func() error {
		return mkfsExt4(j.Mkfs, j.Target, data.Start, data.Size, quantix.LabelData)
	}); err != nil {
		return err
	}

	if err := w.step("GPT and BIOS boot code", func() error {
		if err := f.Sync(); err != nil {
			return err
		}
		w.state = StateIncomplete
		if err := d.Partition(p.Table()); err != nil && !errors.Is(err, disk.ErrReReadDeferred) {
			return fmt.Errorf("write GPT: %w", err)
		}
		s0 := make([]byte, 512)
		if _, err := f.ReadAt(s0, 0); err != nil {
			return err
		}
		mbr, err := PatchMBR(j.Source.BootImg, s0, uint64(bios.Start/p.SectorSize))
		if err != nil {
			return err
		}
		if _, err := f.WriteAt(mbr, 0); err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return err
		}
		rereadPartitions(f)
		return nil
	}); err != nil {
		return err
	}
	return nil
}

// espFile is one file written on QUANTIX-EFI.
type espFile struct {
	name string
	data []byte
}

// espFiles are the ESP's files in write order: the marker first, then the
// bootloader, slot a and last the environment that makes slot a bootable.
func (j Job) espFiles() ([]espFile, error) {
	slot, err := slotFiles(quantix.SlotA, j.Image, j.Version, j.Source.Kernel, j.Source.Initrd)
	if err != nil {
		return nil, err
	}
	files := []espFile{
		{ESPIncomplete, []byte(fmt.Sprintf("%s installed by qx-install on disk GUID %s.\n"+
			"While this file is named %s the install has not finished (or failed) and the disk does not boot.\n",
			j.Title, j.Plan.DiskGUID, ESPIncomplete))},
		{ESPEFI, j.Source.EFI},
		{ESPGrubCfg, []byte(GrubConfig(j.Title, j.Cmdline))},
	}
	files = append(files, slot...)
	env, err := bootenv.Initial().Encode()
	if err != nil {
		return nil, err
	}
	return append(files, espFile{quantix.ESPEnv, env}, espFile{quantix.ESPEnvBackup, env}), nil
}

// slotFiles are the files of one boot slot: kernel, initramfs, manifest.
func slotFiles(slot, image, version string, kernel, initrd []byte) ([]espFile, error) {
	m, err := quantix.SlotManifestInfo{Image: image, Version: version, KernelSHA256: sum(kernel), InitrdSHA256: sum(initrd)}.Encode()
	if err != nil {
		return nil, err
	}
	return []espFile{
		{quantix.ESPSlotFile(slot, quantix.SlotKernel), kernel},
		{quantix.ESPSlotFile(slot, quantix.SlotInitrd), initrd},
		{quantix.ESPSlotFile(slot, quantix.SlotManifest), m},
	}, nil
}

// Finish renames the INSTALL-INCOMPLETE marker to INSTALLED once the disk has been
// verified. (A rename: go-diskfs's FAT Remove leaves the file's clusters allocated.)
func (w *Writer) Finish() error {
	return w.step("rename INSTALL-INCOMPLETE to INSTALLED", func() error {
		d, err := diskfs.Open(w.job.Target, diskfs.WithOpenMode(diskfs.ReadWrite))
		if err != nil {
			return err
		}
		defer d.Close()
		fsys, err := d.GetFilesystem(w.job.Plan.Part(quantix.LabelEFI).Number)
		if err != nil {
			return err
		}
		if err := fsys.Rename("/"+ESPIncomplete, "/"+ESPInstalled); err != nil {
			return fmt.Errorf("rename %s: %w", ESPIncomplete, err)
		}
		f, err := os.OpenFile(w.job.Target, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		return f.Sync()
	})
}

// rereadPartitions asks the kernel to re-read a block device's partition table
// (BLKRRPART); image files ignore it.
func rereadPartitions(f *os.File) {
	if st, err := f.Stat(); err == nil && st.Mode()&os.ModeDevice != 0 {
		_ = unix.IoctlSetInt(int(f.Fd()), unix.BLKRRPART, 0)
	}
}

func writeFAT(fsys filesystem.FileSystem, name string, data []byte) error {
	if dir := path.Dir(name); dir != "." {
		if err := fsys.Mkdir("/" + dir); err != nil {
			return fmt.Errorf("QUANTIX-EFI: mkdir %s: %w", dir, err)
		}
	}
	fl, err := fsys.OpenFile("/"+name, os.O_CREATE|os.O_RDWR|os.O_TRUNC)
	if err != nil {
		return fmt.Errorf("QUANTIX-EFI: create %s: %w", name, err)
	}
	if _, err := fl.Write(data); err != nil {
		fl.Close()
		return fmt.Errorf("QUANTIX-EFI: write %s: %w", name, err)
	}
	if err := fl.Close(); err != nil {
		return fmt.Errorf("QUANTIX-EFI: write %s: %w", name, err)
	}
	return nil
}

func writeExt4(fsys filesystem.FileSystem, name string, file File) error {
	dir := path.Dir(name)
	if dir != "." {
		if err := fsys.Mkdir(dir); err != nil {
			return fmt.Errorf("QUANTIX-CFG: mkdir %s: %w", dir, err)
		}
	}
	fl, err := fsys.OpenFile(name, os.O_CREATE|os.O_RDWR)
	if err != nil {
		return fmt.Errorf("QUANTIX-CFG: create %s: %w", name, err)
	}
	if _, err := fl.Write(file.Data); err != nil {
		fl.Close()
		return fmt.Errorf("QUANTIX-CFG: write %s: %w", name, err)
	}
	if err := fl.Close(); err != nil {
		return fmt.Errorf("QUANTIX-CFG: write %s: %w", name, err)
	}
	if err := fsys.Chmod(name, file.Mode); err != nil {
		return fmt.Errorf("QUANTIX-CFG: chmod %s: %w", name, err)
	}
	return nil
}

// mkfsExt4 formats size bytes at offset of target. go-diskfs writes every inode
// table eagerly (minutes per TiB); mkfs.ext4 leaves them to the kernel's lazy init.
// MKE2FS_CONFIG points nowhere so the built-in defaults apply on the host and in
// the image alike.
func mkfsExt4(mkfs, target string, offset, size int64, label string) error {
	blocks := size / 4096
	cmd := exec.Command(mkfs, "-F", "-q", "-t", "ext4", "-b", "4096", "-L", label,
		"-E", "offset="+strconv.FormatInt(offset, 10)+",lazy_itable_init=1,lazy_journal_init=1,nodiscard",
		target, strconv.FormatInt(blocks, 10))
	cmd.Env = append(os.Environ(), "MKE2FS_CONFIG=/nonexistent/mke2fs.conf")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %v: %s", mkfs, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// fixFAT sets the hidden-sectors field of the boot sector and its backup to the
// partition's start (go-diskfs writes 0), then fixes the ".." entries.
func fixFAT(f *os.File, off int64) error {
	hidden := make([]byte, 4)
	binary.LittleEndian.PutUint32(hidden, uint32(off/512))
	for _, sec := range []int64{0, 6} {
		if _, err := f.WriteAt(hidden, off+sec*512+28); err != nil {
			return err
		}
	}
	return fixFATDotDot(f, off)
}

// fixFATDotDot rewrites the ".." entry of every folder in the root of the FAT32
// filesystem at off to cluster 0, as the FAT specification asks for children of the
// root folder; go-diskfs writes the root's cluster number there, which fsck.fat
// reports as an error.
func fixFATDotDot(f *os.File, off int64) error {
	bs := make([]byte, 512)
	if _, err := f.ReadAt(bs, off); err != nil {
		return err
	}
	bps := int64(binary.LittleEndian.Uint16(bs[11:]))
	spc := int64(bs[13])
	reserved := int64(binary.LittleEndian.Uint16(bs[14:]))
	nfats := int64(bs[16])
	fatSize := int64(binary.LittleEndian.Uint32(bs[36:]))
	rootCluster := int64(binary.LittleEndian.Uint32(bs[44:]))
	if bps != 512 || spc == 0 || string(bs[82:87]) != "FAT32" {
		return fmt.Errorf("fix FAT: not a FAT32 filesystem with 512-byte sectors")
	}
	clusterOff := func(c int64) int64 { return off + (reserved+nfats*fatSize+(c-2)*spc)*bps }
	root := make([]byte, spc*bps)
	if _, err := f.ReadAt(root, clusterOff(rootCluster)); err != nil {
		return err
	}
	for i := 0; i+32 <= len(root); i += 32 {
		e := root[i : i+32]
		if e[0] == 0 {
			break
		}
		if e[0] == 0xE5 || e[11] == 0x0F || e[11]&0x10 == 0 || e[0] == '.' {
			continue
		}
		c := int64(binary.LittleEndian.Uint16(e[20:]))<<16 | int64(binary.LittleEndian.Uint16(e[26:]))
		dot := make([]byte, 64)
		at := clusterOff(c)
		if _, err := f.ReadAt(dot, at); err != nil {
			return err
		}
		if string(dot[32:43]) != "..         " {
			return fmt.Errorf("fix FAT: folder at cluster %d has no '..' entry in its second slot", c)
		}
		if _, err := f.WriteAt([]byte{0, 0}, at+32+20); err != nil {
			return err
		}
		if _, err := f.WriteAt([]byte{0, 0}, at+32+26); err != nil {
			return err
		}
	}
	return nil
}
