package vm

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultSlots is how many VMs may run at once on the machine, across all test
// processes, unless QUANTIX_VM_SLOTS says otherwise (docs/platform.md: two cores, two VMs).
const DefaultSlots = 2

// SlotLockPattern names the lock files of the machine-wide VM slots; they live in /tmp
// whatever TMPDIR says, so every process on the machine agrees on them.
const SlotLockPattern = "/tmp/quantix-vm-slot-%d.lock"

// slotPattern is SlotLockPattern, replaced by the slot tests so that they do not
// take the slots real VM tests on the machine hold.
var slotPattern = SlotLockPattern

// Slots returns the machine-wide VM limit: QUANTIX_VM_SLOTS, else DefaultSlots.
func Slots() (int, error) {
	s := os.Getenv("QUANTIX_VM_SLOTS")
	if s == "" {
		return DefaultSlots, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("QUANTIX_VM_SLOTS=%q: want a whole number of at least 1", s)
	}
	return n, nil
}

// slot is one held lock file.
type slot struct {
	f   *os.File
	idx int
	// reserved: taken from a Reserve; kept while its VM is off (the test reserved
	// it for a restart), released with the reservation.
	reserved bool
}

func (s *slot) release() {
	if s != nil && s.f != nil {
		s.f.Close() // closing the last descriptor drops the flock
		s.f = nil
	}
}

// acquireSlots takes n slots at once (all or none, so two tests that each need two VMs
// cannot deadlock holding one each), waiting until they are free or deadline passes.
func acquireSlots(n int, deadline time.Time, waiting func()) ([]*slot, error) {
	total, err := Slots()
	if err != nil {
		return nil, err
	}
	if n > total {
		return nil, fmt.Errorf("need %d VM slots at once, the machine allows %d (QUANTIX_VM_SLOTS)", n, total)
	}
	told := false
	for {
		var got []*slot
		for i := 0; i < total && len(got) < n; i++ {
			s, err := tryLockSlot(i)
			if err != nil {
				releaseAll(got)
				return nil, err
			}
			if s != nil {
				got = append(got, s)
			}
		}
		if len(got) == n {
			return got, nil
		}
		releaseAll(got)
		if !deadline.IsZero() && time.Now().After(deadline) {
			return nil, fmt.Errorf("no %d free VM slots (of %d) before the test deadline: other tests hold %s", n, total, fmt.Sprintf(slotPattern, 0))
		}
		if !told && waiting != nil {
			waiting()
			told = true
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func tryLockSlot(i int) (*slot, error) {
	path := fmt.Sprintf(slotPattern, i)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, fmt.Errorf("VM slot %s: %w", path, err)
	}
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) || errors.Is(err, unix.EINTR) {
		f.Close()
		return nil, nil
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("VM slot %s: %w", path, err)
	}
	return &slot{f: f, idx: i}, nil
}

func releaseAll(ss []*slot) {
	for _, s := range ss {
		s.release()
	}
}

type reservation struct {
	mu    sync.Mutex
	slots []*slot
}

var (
	reserveMu    sync.Mutex
	reservations = map[testing.TB]*reservation{}
)

// Reserve takes n machine-wide VM slots for test t at once; the next n Start calls of
// t use them instead of taking one each. A test that runs two VMs side by side calls
// Reserve(t, 2) first, so it never holds one slot while waiting for another. The
// slots are released when t ends.
func Reserve(t testing.TB, n int) {
	t.Helper()
	// The accelerator probe boots a VM of its own: run it before holding slots.
	Accel(t)
	ss, err := acquireSlots(n, testDeadline(t), func() { t.Logf("waiting for %d free VM slots", n) })
	if err != nil {
		t.Fatalf("reserve VM slots: %v", err)
	}
	r := &reservation{slots: ss}
	reserveMu.Lock()
	reservations[t] = r
	reserveMu.Unlock()
	t.Cleanup(func() {
		reserveMu.Lock()
		delete(reservations, t)
		reserveMu.Unlock()
		r.mu.Lock()
		releaseAll(r.slots)
		r.slots = nil
		r.mu.Unlock()
	})
}

// takeSlot gives the caller a slot to release when its VM is gone: a reserved one of
// t, else a newly acquired one.
func takeSlot(t testing.TB) (*slot, error) {
	reserveMu.Lock()
	r := reservations[t]
	reserveMu.Unlock()
	if r != nil {
		r.mu.Lock()
		defer r.mu.Unlock()
		if len(r.slots) > 0 {
			s := r.slots[0]
			r.slots = r.slots[1:]
			s.reserved = true
			return s, nil
		}
	}
	ss, err := acquireSlots(1, testDeadline(t), func() { t.Logf("waiting for a free VM slot") })
	if err != nil {
		return nil, err
	}
	return ss[0], nil
}

func testDeadline(t testing.TB) time.Time {
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := d.Deadline(); ok {
			return dl
		}
	}
	return time.Time{}
}
