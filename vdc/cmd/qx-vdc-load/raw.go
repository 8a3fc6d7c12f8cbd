package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
)

// connPool is a fixed set of keep-alive HTTP/1.1 connections that send prebuilt
// request bytes. Simulated nodes are cheap this way: net/http's client costs the
// load generator about as much CPU as the vDC spends serving, and on a 2-core
// machine every cycle the generator burns is taken from the vDC and PostgreSQL.
type connPool struct {
	addr  string
	tls   *tls.Config // nil: plain HTTP
	conns chan *rawConn
}

type rawConn struct {
	c  net.Conn
	br *bufio.Reader
}

func newConnPool(base string, n int, tlsCfg *tls.Config) (*connPool, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, err
	}
	p := &connPool{addr: u.Host, tls: tlsCfg, conns: make(chan *rawConn, n)}
	for range n {
		p.conns <- &rawConn{}
	}
	return p, nil
}

// rawRequest builds a complete POST request.
func rawRequest(host, path, token string, body []byte) []byte {
	return append([]byte(fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n", path, host, token, len(body))), body...)
}

// do sends req on a free connection (waiting for one) and returns the status and
// body.
func (p *connPool) do(req []byte) (int, []byte, error) {
	rc := <-p.conns
	defer func() { p.conns <- rc }()
	for attempt := 0; ; attempt++ {
		if rc.c == nil {
			var c net.Conn
			var err error
			if p.tls != nil {
				c, err = tls.Dial("tcp", p.addr, p.tls)
			} else {
				c, err = net.Dial("tcp", p.addr)
			}
			if err != nil {
				return 0, nil, err
			}
			rc.c, rc.br = c, bufio.NewReaderSize(c, 4096)
		}
		code, body, err := rc.roundTrip(req)
		if err == nil {
			return code, body, nil
		}
		rc.c.Close()
		rc.c = nil
		if attempt > 0 {
			return 0, nil, err
		}
		// A kept-alive connection the server closed: retry once on a new one.
	}
}

func (rc *rawConn) roundTrip(req []byte) (int, []byte, error) {
	if _, err := rc.c.Write(req); err != nil {
		return 0, nil, err
	}
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		return 0, nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Close {
		rc.c.Close()
		rc.c = nil
	}
	return resp.StatusCode, body, err
}

func (p *connPool) close() {
	for range cap(p.conns) {
		if rc := <-p.conns; rc.c != nil {
			rc.c.Close()
		}
	}
}
