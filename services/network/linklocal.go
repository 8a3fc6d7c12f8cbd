package network

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"
)

type llEvent struct {
	ip       net.IP
	conflict bool // another host uses ip, which was announced ready before
}

// startLinkLocal probes for an RFC 3927 address in the background while DHCP
// tries, so the fallback is ready when the first-lease timeout fires.
func (s *Service) startLinkLocal(ctx context.Context) {
	env, ifi, t, log, events := s.env, ifaceOf(s.link), s.cfg.LinkLocal, s.log, s.llEvents
	s.ll = startWorker(ctx, func(ctx context.Context) { runLinkLocal(ctx, env, ifi, t, log, events) })
}

func runLinkLocal(ctx context.Context, env *netEnv, ifi *net.Interface, t LinkLocalTiming, log *slog.Logger, events chan<- llEvent) {
	wait := func(d time.Duration) bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	var conn *arpConn
	for conn == nil {
		var err error
		if conn, err = env.openARP(ifi); err != nil {
			log.Warn("link-local", "err", err)
			if !wait(time.Second) {
				return
			}
		}
	}
	defer conn.Close()
	conflicts := 0
	for n := 0; ctx.Err() == nil; n++ {
		if conflicts >= t.MaxConflicts && !wait(t.RateLimit) {
			return
		}
		ip := linkLocalCandidate(ifi.HardwareAddr, n)
		conflict, err := conn.probe(ctx, ip, t)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			log.Warn("link-local probe", "iface", ifi.Name, "addr", ip, "err", err)
			n--
			if !wait(time.Second) {
				return
			}
			continue
		}
		if conflict {
			conflicts++
			log.Info("link-local address in use, trying another", "iface", ifi.Name, "addr", ip)
			continue
		}
		select {
		case events <- llEvent{ip: ip}:
		case <-ctx.Done():
			return
		}
		// Defend (RFC 3927 2.5): a packet from another host claiming ip ends it.
		found, err := conn.readUntil(ctx, time.Now().Add(100*365*24*time.Hour), func(p arpPacket) bool { return p.spa.Equal(ip) })
		if !found {
			if err != nil && ctx.Err() == nil {
				log.Warn("link-local watch", "iface", ifi.Name, "err", err)
			}
			return
		}
		conflicts++
		log.Warn("link-local address conflict", "iface", ifi.Name, "addr", ip)
		select {
		case events <- llEvent{ip: ip, conflict: true}:
		case <-ctx.Done():
			return
		}
	}
}

func (s *Service) onLinkLocal(ctx context.Context, ev llEvent) {
	if s.ll == nil {
		return
	}
	if ev.conflict {
		s.llReady = nil
		if s.programmed.source == SourceLinkLocal && s.programmed.addr.IP.Equal(ev.ip) {
			s.setError(fmt.Errorf("link-local address %s is used by another host; choosing another", ev.ip))
			if err := s.programTarget(target{source: SourceNone, dns: s.cur.dns}); err != nil {
				s.setError(err)
			}
		}
		return
	}
	s.llReady = ev.ip
	if s.fallbackOn && s.lease == nil {
		s.assignLinkLocal(ctx)
	}
}

func (s *Service) assignLinkLocal(ctx context.Context) {
	ip := s.llReady
	t := target{source: SourceLinkLocal, addr: &net.IPNet{IP: ip, Mask: net.CIDRMask(16, 32)}, dns: s.cur.dns}
	if err := s.programTarget(t); err != nil {
		s.setError(fmt.Errorf("assign link-local %s: %w", ip, err))
		return
	}
	env, ifi, timing, log := s.env, ifaceOf(s.link), s.cfg.LinkLocal, s.log
	go func() {
		conn, err := env.openARP(ifi)
		if err != nil {
			log.Warn("link-local announce", "err", err)
			return
		}
		defer conn.Close()
		if err := conn.announce(ctx, ip, timing); err != nil && ctx.Err() == nil {
			log.Warn("link-local announce", "err", err)
		}
	}()
}
