package vm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// The classic libpcap file format (what tcpdump -r and Wireshark read): a 24-byte
// global header, then per packet a 16-byte record header and the bytes.
const (
	pcapMagic    = 0xa1b2c3d4 // microsecond timestamps
	pcapSnapLen  = 65535
	linkTypeEth  = 1
	pcapRecLen   = 16
	pcapFileHdrL = 24
)

// pcapWriter appends Ethernet frames to a pcap file.
type pcapWriter struct {
	mu sync.Mutex
	f  *os.File
}

func newPcapWriter(path string) (*pcapWriter, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("create pcap %s: %w", path, err)
	}
	var h [pcapFileHdrL]byte
	binary.LittleEndian.PutUint32(h[0:], pcapMagic)
	binary.LittleEndian.PutUint16(h[4:], 2)
	binary.LittleEndian.PutUint16(h[6:], 4)
	binary.LittleEndian.PutUint32(h[16:], pcapSnapLen)
	binary.LittleEndian.PutUint32(h[20:], linkTypeEth)
	if _, err := f.Write(h[:]); err != nil {
		f.Close()
		return nil, fmt.Errorf("write pcap %s: %w", path, err)
	}
	return &pcapWriter{f: f}, nil
}

func (w *pcapWriter) write(t time.Time, frame []byte) {
	n := len(frame)
	if n > pcapSnapLen {
		n = pcapSnapLen
	}
	rec := make([]byte, pcapRecLen+n)
	binary.LittleEndian.PutUint32(rec[0:], uint32(t.Unix()))
	binary.LittleEndian.PutUint32(rec[4:], uint32(t.Nanosecond()/1000))
	binary.LittleEndian.PutUint32(rec[8:], uint32(n))
	binary.LittleEndian.PutUint32(rec[12:], uint32(len(frame)))
	copy(rec[pcapRecLen:], frame[:n])
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f != nil {
		w.f.Write(rec) // one write per record: a reader never sees half a header
	}
}

func (w *pcapWriter) close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

// Frame is one packet read back from a pcap.
type Frame struct {
	Time time.Time
	Data []byte
}

// ReadPcap reads an Ethernet pcap file (the hub's, or any classic little-endian
// microsecond pcap). A record cut short at the end (a capture still being written)
// is ignored.
func ReadPcap(path string) ([]Frame, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read pcap: %w", err)
	}
	defer f.Close()
	var h [pcapFileHdrL]byte
	if _, err := io.ReadFull(f, h[:]); err != nil {
		return nil, fmt.Errorf("read pcap %s: header: %w", path, err)
	}
	if m := binary.LittleEndian.Uint32(h[0:]); m != pcapMagic {
		return nil, fmt.Errorf("read pcap %s: magic %#x, want %#x", path, m, pcapMagic)
	}
	if lt := binary.LittleEndian.Uint32(h[20:]); lt != linkTypeEth {
		return nil, fmt.Errorf("read pcap %s: link type %d, want %d (Ethernet)", path, lt, linkTypeEth)
	}
	var frames []Frame
	for {
		var r [pcapRecLen]byte
		if _, err := io.ReadFull(f, r[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return frames, nil
			}
			return nil, fmt.Errorf("read pcap %s: %w", path, err)
		}
		n := binary.LittleEndian.Uint32(r[8:])
		if n > pcapSnapLen {
			return nil, fmt.Errorf("read pcap %s: record %d has length %d", path, len(frames), n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(f, data); err != nil {
			return frames, nil
		}
		ts := time.Unix(int64(binary.LittleEndian.Uint32(r[0:])), int64(binary.LittleEndian.Uint32(r[4:]))*1000)
		frames = append(frames, Frame{Time: ts, Data: data})
	}
}
