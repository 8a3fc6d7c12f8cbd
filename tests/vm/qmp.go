package vm

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// QMP is a small client for the QEMU Machine Protocol on a unix socket: commands
// with their replies, and the asynchronous events QEMU sends (RESET, SHUTDOWN,
// POWERDOWN, ...).
type QMP struct {
	conn net.Conn
	mu   sync.Mutex // one command at a time
	next int

	evMu     sync.Mutex
	events   []QMPEvent
	evChange chan struct{}
	replies  chan qmpMessage
	done     chan struct{}
	readErr  error
}

// QMPEvent is one asynchronous QMP event.
type QMPEvent struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
	Time time.Time       `json:"-"`
}

// QMPError is an error reply from QEMU.
type QMPError struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

type qmpMessage struct {
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Return    json.RawMessage `json:"return"`
	Error     *QMPError       `json:"error"`
	ID        *int            `json:"id"`
	QMP       json.RawMessage `json:"QMP"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// DialQMP connects to a QMP socket and negotiates capabilities.
func DialQMP(path string, timeout time.Duration) (*QMP, error) {
	conn, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return nil, fmt.Errorf("qmp dial %s: %w", path, err)
	}
	q := &QMP{conn: conn, evChange: make(chan struct{}), replies: make(chan qmpMessage, 1), done: make(chan struct{})}
	r := bufio.NewReader(conn)
	conn.SetReadDeadline(time.Now().Add(timeout))
	var greeting qmpMessage
	line, err := r.ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &greeting)
	}
	if err != nil || greeting.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("qmp greeting on %s: %q: %v", path, line, err)
	}
	conn.SetReadDeadline(time.Time{})
	go q.read(r)
	if _, err := q.Execute("qmp_capabilities", nil); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

func (q *QMP) read(r *bufio.Reader) {
	defer close(q.done)
	dec := json.NewDecoder(r)
	for {
		var m qmpMessage
		if err := dec.Decode(&m); err != nil {
			q.readErr = err
			return
		}
		if m.Event != "" {
			q.evMu.Lock()
			q.events = append(q.events, QMPEvent{Name: m.Event, Data: m.Data,
				Time: time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)})
			close(q.evChange)
			q.evChange = make(chan struct{})
			q.evMu.Unlock()
			continue
		}
		select {
		case q.replies <- m:
		case <-time.After(10 * time.Second): // nobody waits any more
		}
	}
}

// Execute runs a QMP command with optional arguments and returns its "return" value.
func (q *QMP) Execute(cmd string, args any) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.next++
	id := q.next
	req := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	q.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	timeout := time.After(30 * time.Second)
	for {
		select {
		case m := <-q.replies:
			if m.ID == nil || *m.ID != id {
				continue // a reply to an earlier, abandoned command
			}
			if m.Error != nil {
				m.Error.Command = cmd
				return nil, m.Error
			}
			return m.Return, nil
		case <-q.done:
			if cmd == "quit" {
				return nil, nil // QEMU may close the socket before replying
			}
			return nil, fmt.Errorf("qmp %s: connection closed: %v", cmd, q.readErr)
		case <-timeout:
			return nil, fmt.Errorf("qmp %s: no reply within 30s", cmd)
		}
	}
}

// Events returns the events received so far.
func (q *QMP) Events() []QMPEvent {
	q.evMu.Lock()
	defer q.evMu.Unlock()
	return append([]QMPEvent(nil), q.events...)
}

// AwaitEvent waits for the first event called name at or after index from of
// Events() and returns it with its index.
func (q *QMP) AwaitEvent(name string, from int, timeout time.Duration) (QMPEvent, int, error) {
	deadline := time.After(timeout)
	for {
		q.evMu.Lock()
		for i := from; i < len(q.events); i++ {
			if q.events[i].Name == name {
				ev := q.events[i]
				q.evMu.Unlock()
				return ev, i, nil
			}
		}
		ch := q.evChange
		q.evMu.Unlock()
		select {
		case <-ch:
		case <-q.done:
			return QMPEvent{}, 0, fmt.Errorf("qmp event %s: connection closed", name)
		case <-deadline:
			return QMPEvent{}, 0, fmt.Errorf("qmp event %s: %w after %v", name, ErrTimeout, timeout)
		}
	}
}

// Status returns the VM run state from query-status ("running", "paused", ...).
func (q *QMP) Status() (string, error) {
	raw, err := q.Execute("query-status", nil)
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return "", fmt.Errorf("qmp query-status: %w", err)
	}
	if st.Status == "" {
		return "", errors.New("qmp query-status: no status in reply")
	}
	return st.Status, nil
}

// Close closes the connection.
func (q *QMP) Close() error { return q.conn.Close() }
