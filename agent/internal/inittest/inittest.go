// Package inittest serves qx-init's control socket (quantix.InitClient's
// protocol) for agent tests: the slots and stage requests answer what the test
// set, stage checks the folder it is given, and reboot is recorded, not done
// (tests fake reboots). It stands in for services/initd's Control until that
// serves slots and stage on a folder ESP.
package inittest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/quantix/quantix"
)

// Init is a control socket serving one test.
type Init struct {
	Socket string

	mu sync.Mutex
	// Slots is the answer to slots; SlotsError, when set, is the error answer
	// instead (a live boot: "not an A/B install").
	slots      quantix.SlotsStatus
	slotsError string
	// stage answers a stage request for a folder: a Staged or an error text.
	stage    func(dir string) (quantix.Staged, error)
	requests []string
}

// Start serves a control socket in a temp folder until t ends.
func Start(t testing.TB) *Init {
	t.Helper()
	dir, err := os.MkdirTemp("", "init") // short: a unix socket path has ~100 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	in := &Init{Socket: filepath.Join(dir, "init.sock")}
	ln, err := net.Listen("unix", in.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go in.serve(c)
		}
	}()
	return in
}

// Client asks this socket.
func (in *Init) Client() quantix.InitClient { return quantix.InitClient{Socket: in.Socket} }

// SetSlots sets the answer to slots.
func (in *Init) SetSlots(st quantix.SlotsStatus) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.slots, in.slotsError = st, ""
}

// SetSlotsError makes slots answer "error: <text>".
func (in *Init) SetSlotsError(text string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.slotsError = text
}

// SetStage sets how a stage request is answered.
func (in *Init) SetStage(f func(dir string) (quantix.Staged, error)) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.stage = f
}

// Requests are the request lines served so far.
func (in *Init) Requests() []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]string(nil), in.requests...)
}

// Count is how many requests started with verb.
func (in *Init) Count(verb string) int {
	n := 0
	for _, r := range in.Requests() {
		if r == verb || strings.HasPrefix(r, verb+" ") {
			n++
		}
	}
	return n
}

func (in *Init) serve(c net.Conn) {
	defer c.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return
	}
	fmt.Fprintln(c, in.answer(strings.TrimSpace(line)))
}

func (in *Init) answer(req string) string {
	in.mu.Lock()
	in.requests = append(in.requests, req)
	slots, slotsErr, stage := in.slots, in.slotsError, in.stage
	in.mu.Unlock()
	verb, arg, _ := strings.Cut(req, " ")
	switch verb {
	case quantix.InitRequestSlots:
		if slotsErr != "" {
			return "error: " + slotsErr
		}
		b, _ := json.Marshal(slots)
		return string(b)
	case quantix.InitRequestStage:
		if stage == nil {
			return "error: no stage answer set"
		}
		st, err := stage(arg)
		if err != nil {
			return "error: " + err.Error()
		}
		b, _ := json.Marshal(st)
		return string(b)
	case string(quantix.Reboot), string(quantix.Poweroff):
		return quantix.InitAnswerOK
	}
	return fmt.Sprintf("error: unknown request %q", req)
}
