package initd

import (
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
)

// Linux input event codes (linux/input-event-codes.h).
const (
	evKey    = 0x01
	keyPower = 116
	// inputEventSize is struct input_event on 64-bit: timeval (16), type, code, value.
	inputEventSize = 24
)

// powerButton watches the input devices (the ACPI power button, with the button
// and evdev modules loaded) and calls press once the power key goes down: how a
// hypervisor (QEMU system_powerdown, virsh shutdown) or a finger asks for a clean
// power-off.
type powerButton struct {
	log     *slog.Logger
	press   func()
	mu      sync.Mutex
	watched map[string]bool
}

// scan starts watching event devices not watched yet and returns how many are
// watched in all.
func (p *powerButton) scan() int {
	devs, _ := filepath.Glob("/dev/input/event*")
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, d := range devs {
		if p.watched[d] {
			continue
		}
		f, err := os.Open(d)
		if err != nil {
			p.log.Warn("input device", "dev", d, "err", err)
			continue
		}
		p.watched[d] = true
		go p.watch(f)
	}
	return len(p.watched)
}

func (p *powerButton) watch(r io.ReadCloser) {
	defer r.Close()
	buf := make([]byte, inputEventSize)
	for {
		if _, err := io.ReadFull(r, buf); err != nil {
			return
		}
		if isPowerPress(buf) {
			p.log.Info("power button pressed")
			p.press()
		}
	}
}

// isPowerPress reports whether one struct input_event is KEY_POWER going down.
func isPowerPress(ev []byte) bool {
	typ := binary.LittleEndian.Uint16(ev[16:])
	code := binary.LittleEndian.Uint16(ev[18:])
	value := int32(binary.LittleEndian.Uint32(ev[20:]))
	return typ == evKey && code == keyPower && value == 1
}
