package vdc

import (
	"bufio"
	"net"
	"sync"
	"time"
)

// sniffListener splits one listening port (listen, :8080) in two by the first byte
// a client sends: 0x16 (a TLS handshake record, the ClientHello) goes to TLS, anything
// else to plain HTTP. Agents and browsers keep the one address they know.
type sniffListener struct {
	net.Listener
	tls, plain *chanListener
	once       sync.Once
}

// sniffTimeout bounds the wait for a new connection's first byte.
const sniffTimeout = 10 * time.Second

func newSniffListener(l net.Listener) *sniffListener {
	s := &sniffListener{Listener: l}
	done := make(chan struct{})
	s.tls = &chanListener{addr: l.Addr(), conns: make(chan net.Conn), done: done, close: s.close}
	s.plain = &chanListener{addr: l.Addr(), conns: make(chan net.Conn), done: done, close: s.close}
	go s.accept(done)
	return s
}

func (s *sniffListener) close() {
	s.once.Do(func() { s.Listener.Close() })
}

func (s *sniffListener) accept(done chan struct{}) {
	defer close(done)
	for {
		c, err := s.Listener.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return
		}
		go s.route(c, done)
	}
}

func (s *sniffListener) route(c net.Conn, done chan struct{}) {
	c.SetReadDeadline(time.Now().Add(sniffTimeout))
	br := bufio.NewReader(c)
	first, err := br.Peek(1)
	c.SetReadDeadline(time.Time{})
	if err != nil {
		c.Close()
		return
	}
	to := s.plain
	if first[0] == 0x16 {
		to = s.tls
	}
	select {
	case to.conns <- &peekedConn{Conn: c, r: br}:
	case <-done:
		c.Close()
	}
}

// chanListener is one side of a sniffListener.
type chanListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	close func()
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error   { l.close(); return nil }
func (l *chanListener) Addr() net.Addr { return l.addr }

// peekedConn replays the bytes the sniffer read.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
