package build

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"unicode/utf16"
)

// The hybrid layout makes one file boot as a CD (El Torito) and written raw to a
// disk or USB stick: ISO9660 leaves its first 32 KiB (the system area) free, so the
// MBR (sector 0) and the primary GPT (sectors 1-33) fit there, and the backup GPT is
// appended after the ISO volume.
//
//   - BIOS, raw disk: the firmware runs the MBR boot code (syslinux's isohdpfx.bin),
//     which loads isolinux.bin from the sector number stored at MBR offset 432, the
//     way isohybrid does it.
//   - UEFI, raw disk: the protective MBR entry (0xEE at LBA 1) makes the firmware read
//     the GPT, whose one partition is an EFI System Partition over the El Torito EFI
//     FAT image inside the ISO; the firmware runs EFI/BOOT/BOOTX64.EFI from it.
//   - CD (BIOS or UEFI): the El Torito catalog, as go-diskfs wrote it.

const (
	sector       = 512
	gptEntries   = 128
	gptEntrySize = 128
	gptEntrySecs = gptEntries * gptEntrySize / sector // 32
	// hybridTail is appended after the ISO volume for the backup GPT (33 sectors),
	// rounded up to whole 2048-byte blocks so the file stays a valid CD image.
	hybridTail = 18 * 2048
)

// espType is the EFI System Partition type GUID C12A7328-F81F-11D2-BA4B-00A0C93EC93B
// in its on-disk (mixed-endian) form.
var espType = guidBytes("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")

// ElTorito is what the hybrid layout needs from an ISO's boot catalog.
type ElTorito struct {
	BIOSLBA uint32 // isolinux.bin, in 2048-byte blocks
	EFILBA  uint32 // the EFI FAT image, in 2048-byte blocks
	EFISecs uint16 // its size in 512-byte sectors as catalogued (0 when too large)
}

// ReadElTorito parses the boot record volume descriptor and boot catalog of an ISO.
func ReadElTorito(r io.ReaderAt) (ElTorito, error) {
	var et ElTorito
	brvd := make([]byte, 2048)
	if _, err := r.ReadAt(brvd, 17*2048); err != nil {
		return et, fmt.Errorf("read boot record: %w", err)
	}
	if brvd[0] != 0 || string(brvd[1:6]) != "CD001" || !bytes.HasPrefix(brvd[7:], []byte("EL TORITO SPECIFICATION")) {
		return et, errors.New("no El Torito boot record at sector 17")
	}
	catLBA := binary.LittleEndian.Uint32(brvd[0x47:])
	cat := make([]byte, 2048)
	if _, err := r.ReadAt(cat, int64(catLBA)*2048); err != nil {
		return et, fmt.Errorf("read boot catalog: %w", err)
	}
	if cat[0] != 1 || cat[0x1e] != 0x55 || cat[0x1f] != 0xaa {
		return et, errors.New("boot catalog: bad validation entry")
	}
	if cat[0x20] != 0x88 {
		return et, errors.New("boot catalog: default entry is not bootable")
	}
	et.BIOSLBA = binary.LittleEndian.Uint32(cat[0x20+8:])
	platform := byte(0)
	for off := 0x40; off+32 <= len(cat); off += 32 {
		e := cat[off:]
		switch e[0] {
		case 0x90, 0x91:
			platform = e[1]
		case 0x88:
			if platform == 0xef && et.EFILBA == 0 {
				et.EFISecs = binary.LittleEndian.Uint16(e[6:])
				et.EFILBA = binary.LittleEndian.Uint32(e[8:])
			}
		}
		if e[0] == 0 {
			break
		}
	}
	if et.EFILBA == 0 {
		return et, errors.New("boot catalog: no EFI entry")
	}
	return et, nil
}

// MakeHybrid turns the ISO file at path into a hybrid image: MBR boot code from
// mbrCode (isohdpfx.bin, 432 bytes), a protective MBR, and a GPT whose EFI System
// Partition covers the El Torito EFI image of efiSize bytes. seed makes the disk
// identifiers deterministic. The file grows by hybridTail bytes.
func MakeHybrid(path string, mbrCode []byte, efiSize int64, seed string) error {
	if len(mbrCode) != 432 {
		return fmt.Errorf("hybrid MBR: boot code is %d bytes, want 432 (isohdpfx.bin)", len(mbrCode))
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size()%2048 != 0 {
		return fmt.Errorf("hybrid %s: size %d is not a multiple of 2048", path, st.Size())
	}
	sys := make([]byte, 32*1024)
	if _, err := f.ReadAt(sys, 0); err != nil {
		return err
	}
	if !bytes.Equal(sys, make([]byte, len(sys))) {
		return fmt.Errorf("hybrid %s: the ISO system area is not empty", path)
	}
	et, err := ReadElTorito(f)
	if err != nil {
		return fmt.Errorf("hybrid %s: %w", path, err)
	}
	total := st.Size() + hybridTail
	if err := f.Truncate(total); err != nil {
		return err
	}
	lastLBA := uint64(total/sector - 1)
	espStart := uint64(et.EFILBA) * 4
	espEnd := espStart + uint64((efiSize+sector-1)/sector) - 1
	id := sha256.Sum256([]byte("quantix-hybrid:" + seed))

	// MBR.
	mbr := make([]byte, sector)
	copy(mbr, mbrCode)
	binary.LittleEndian.PutUint64(mbr[432:], uint64(et.BIOSLBA)*4) // isolinux.bin, 512-byte sectors
	copy(mbr[440:444], id[0:4])                                    // disk signature
	pmbrSize := lastLBA
	if pmbrSize > 0xffffffff {
		pmbrSize = 0xffffffff
	}
	putMBREntry(mbr[446:], 0x00, 0xee, 1, uint32(pmbrSize))
	mbr[510], mbr[511] = 0x55, 0xaa

	// GPT partition entries: the ESP only.
	entries := make([]byte, gptEntries*gptEntrySize)
	e := entries[0:gptEntrySize]
	copy(e[0:16], espType)
	copy(e[16:32], guidFromHash(id[4:20]))
	binary.LittleEndian.PutUint64(e[32:], espStart)
	binary.LittleEndian.PutUint64(e[40:], espEnd)
	copy(e[56:], utf16le("EFI boot"))
	entriesCRC := crc32.ChecksumIEEE(entries)

	diskGUID := guidFromHash(id[20:32])
	primary := gptHeader(1, lastLBA, 2, lastLBA, diskGUID, entriesCRC)
	backup := gptHeader(lastLBA, 1, lastLBA-gptEntrySecs, lastLBA, diskGUID, entriesCRC)

	writes := []struct {
		off  int64
		data []byte
	}{
		{0, mbr},
		{sector, primary},
		{2 * sector, entries},
		{int64(lastLBA-gptEntrySecs) * sector, entries},
		{int64(lastLBA) * sector, backup},
	}
	for _, w := range writes {
		if _, err := f.WriteAt(w.data, w.off); err != nil {
			return fmt.Errorf("hybrid %s: %w", path, err)
		}
	}
	return f.Sync()
}

func putMBREntry(b []byte, status, typ byte, start, size uint32) {
	b[0] = status
	copy(b[1:4], []byte{0xfe, 0xff, 0xff}) // CHS: beyond addressing, use LBA
	b[4] = typ
	copy(b[5:8], []byte{0xfe, 0xff, 0xff})
	binary.LittleEndian.PutUint32(b[8:], start)
	binary.LittleEndian.PutUint32(b[12:], size)
}

func gptHeader(my, alt, entriesLBA, lastLBA uint64, diskGUID []byte, entriesCRC uint32) []byte {
	h := make([]byte, sector)
	copy(h[0:8], "EFI PART")
	binary.LittleEndian.PutUint32(h[8:], 0x00010000)
	binary.LittleEndian.PutUint32(h[12:], 92)
	binary.LittleEndian.PutUint64(h[24:], my)
	binary.LittleEndian.PutUint64(h[32:], alt)
	binary.LittleEndian.PutUint64(h[40:], 2+gptEntrySecs)         // first usable
	binary.LittleEndian.PutUint64(h[48:], lastLBA-gptEntrySecs-1) // last usable
	copy(h[56:72], diskGUID)
	binary.LittleEndian.PutUint64(h[72:], entriesLBA)
	binary.LittleEndian.PutUint32(h[80:], gptEntries)
	binary.LittleEndian.PutUint32(h[84:], gptEntrySize)
	binary.LittleEndian.PutUint32(h[88:], entriesCRC)
	binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
	return h
}

// guidBytes encodes a textual GUID in the GPT's mixed-endian form.
func guidBytes(s string) []byte {
	var raw [16]byte
	hex := bytes.ReplaceAll([]byte(s), []byte("-"), nil)
	for i := range raw {
		fmt.Sscanf(string(hex[2*i:2*i+2]), "%02x", &raw[i])
	}
	b := make([]byte, 16)
	b[0], b[1], b[2], b[3] = raw[3], raw[2], raw[1], raw[0]
	b[4], b[5] = raw[5], raw[4]
	b[6], b[7] = raw[7], raw[6]
	copy(b[8:], raw[8:])
	return b
}

// guidFromHash makes a random-looking (version 4 style) GUID from hash bytes.
func guidFromHash(h []byte) []byte {
	b := make([]byte, 16)
	copy(b, h)
	for i := len(h); i < 16; i++ {
		b[i] = h[i%len(h)] ^ byte(i)
	}
	b[7] = b[7]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return b
}

func utf16le(s string) []byte {
	var b []byte
	for _, c := range utf16.Encode([]rune(s)) {
		b = binary.LittleEndian.AppendUint16(b, c)
	}
	return b
}

// Layout is a parsed hybrid image, for tests and `qx-image inspect`.
type Layout struct {
	MBRCode      []byte // first 432 bytes
	MBRBootLBA   uint64 // offset 432
	MBRSignature bool
	MBRParts     [4]MBRPart
	GPT          GPTHeader
	BackupGPT    GPTHeader
	GPTParts     []GPTPart
	ElTorito     ElTorito
	Size         int64
}

// MBRPart is one MBR partition entry.
type MBRPart struct {
	Status, Type byte
	Start, Size  uint32
}

// GPTHeader is the part of a GPT header the checks need.
type GPTHeader struct {
	MyLBA, AltLBA, FirstUsable, LastUsable, EntriesLBA uint64
	Entries, EntrySize                                 uint32
	DiskGUID                                           []byte
}

// GPTPart is one used GPT partition entry.
type GPTPart struct {
	Type, GUID []byte
	First      uint64
	Last       uint64
	Name       string
}

// ReadLayout parses and checks the MBR, both GPTs (signatures and CRCs) and the El
// Torito catalog of a hybrid image.
func ReadLayout(path string) (*Layout, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	l := &Layout{Size: st.Size()}
	mbr := make([]byte, sector)
	if _, err := f.ReadAt(mbr, 0); err != nil {
		return nil, err
	}
	l.MBRCode = mbr[:432]
	l.MBRBootLBA = binary.LittleEndian.Uint64(mbr[432:])
	l.MBRSignature = mbr[510] == 0x55 && mbr[511] == 0xaa
	for i := range l.MBRParts {
		e := mbr[446+16*i:]
		l.MBRParts[i] = MBRPart{Status: e[0], Type: e[4], Start: binary.LittleEndian.Uint32(e[8:]), Size: binary.LittleEndian.Uint32(e[12:])}
	}
	readHdr := func(lba uint64) (GPTHeader, []byte, error) {
		h := make([]byte, sector)
		if _, err := f.ReadAt(h, int64(lba)*sector); err != nil {
			return GPTHeader{}, nil, err
		}
		if string(h[0:8]) != "EFI PART" {
			return GPTHeader{}, nil, fmt.Errorf("GPT header at LBA %d: no signature", lba)
		}
		crc := binary.LittleEndian.Uint32(h[16:])
		c := append([]byte(nil), h[:92]...)
		binary.LittleEndian.PutUint32(c[16:], 0)
		if crc32.ChecksumIEEE(c) != crc {
			return GPTHeader{}, nil, fmt.Errorf("GPT header at LBA %d: bad CRC", lba)
		}
		g := GPTHeader{
			MyLBA: binary.LittleEndian.Uint64(h[24:]), AltLBA: binary.LittleEndian.Uint64(h[32:]),
			FirstUsable: binary.LittleEndian.Uint64(h[40:]), LastUsable: binary.LittleEndian.Uint64(h[48:]),
			EntriesLBA: binary.LittleEndian.Uint64(h[72:]), Entries: binary.LittleEndian.Uint32(h[80:]),
			EntrySize: binary.LittleEndian.Uint32(h[84:]), DiskGUID: append([]byte(nil), h[56:72]...),
		}
		ents := make([]byte, int(g.Entries)*int(g.EntrySize))
		if _, err := f.ReadAt(ents, int64(g.EntriesLBA)*sector); err != nil {
			return GPTHeader{}, nil, err
		}
		if crc32.ChecksumIEEE(ents) != binary.LittleEndian.Uint32(h[88:]) {
			return GPTHeader{}, nil, fmt.Errorf("GPT at LBA %d: bad partition entry CRC", lba)
		}
		return g, ents, nil
	}
	var ents []byte
	if l.GPT, ents, err = readHdr(1); err != nil {
		return nil, err
	}
	var backupEnts []byte
	if l.BackupGPT, backupEnts, err = readHdr(l.GPT.AltLBA); err != nil {
		return nil, err
	}
	if !bytes.Equal(ents, backupEnts) {
		return nil, errors.New("GPT: backup partition entries differ from the primary ones")
	}
	for i := 0; i < int(l.GPT.Entries); i++ {
		e := ents[i*int(l.GPT.EntrySize):]
		if bytes.Equal(e[0:16], make([]byte, 16)) {
			continue
		}
		var name []uint16
		for j := 56; j+1 < 128; j += 2 {
			c := binary.LittleEndian.Uint16(e[j:])
			if c == 0 {
				break
			}
			name = append(name, c)
		}
		l.GPTParts = append(l.GPTParts, GPTPart{
			Type: append([]byte(nil), e[0:16]...), GUID: append([]byte(nil), e[16:32]...),
			First: binary.LittleEndian.Uint64(e[32:]), Last: binary.LittleEndian.Uint64(e[40:]),
			Name: string(utf16.Decode(name)),
		})
	}
	if l.ElTorito, err = ReadElTorito(f); err != nil {
		return nil, err
	}
	return l, nil
}

// IsESP reports whether a GPT partition type is the EFI System Partition.
func IsESP(typ []byte) bool { return bytes.Equal(typ, espType) }
