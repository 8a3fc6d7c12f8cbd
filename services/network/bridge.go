package network

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The management bridge (docs/design.md §13): on Quantix-OS the address lives on a
// Linux bridge whose port is the management NIC, so VM taps can join the same
// segment. The bridge carries the NIC's MAC (DHCP reservations and the link-local
// address stay those of the machine), STP off and forward delay 0 (the port
// forwards at once: no 30 s of listening and learning on every boot).

// bridgeOpts are the bridge attributes the service sets and verifies; netlink's
// Bridge type has neither, so they travel as raw IFLA_BR_* attributes.
type bridgeOpts struct {
	stp          uint32 // IFLA_BR_STP_STATE: 0 off
	forwardDelay uint32 // IFLA_BR_FORWARD_DELAY, in clock ticks
}

// ensureBridge makes name the bridge over nic, touching only what differs: it is
// created when missing (with nic's MAC), its MAC, STP and forward delay are set
// when wrong, it is set up, and nic is enslaved to it and set up. A second call
// changes nothing (no link flaps). A bridge this call created is deleted again when
// a later step fails, and nic is released, so a failure leaves the layout as it was.
func (e *netEnv) ensureBridge(name string, nic netlink.Link) (netlink.Link, error) {
	mac := nic.Attrs().HardwareAddr
	// The NIC goes up first: the kernel reports its carrier (linkwatch, up to a
	// second later) while the bridge is made, and a port that has it when it
	// joins forwards at once (STP off, forward delay 0), so br0 has carrier sooner.
	raised := false
	if nic.Attrs().Flags&net.FlagUp == 0 {
		if err := e.nl(func(h *netlink.Handle) error { return h.LinkSetUp(nic) }); err != nil {
			return nil, fmt.Errorf("set %s up: %w", nic.Attrs().Name, err)
		}
		raised = true
	}
	br, err := e.linkByName(name)
	created := false
	enslaved := false
	undo := func(err error) (netlink.Link, error) {
		if enslaved {
			if uerr := e.nl(func(h *netlink.Handle) error { return h.LinkSetNoMaster(nic) }); uerr != nil {
				err = errors.Join(err, fmt.Errorf("release %s again: %w", nic.Attrs().Name, uerr))
			}
		}
		if created && br != nil {
			if uerr := e.nl(func(h *netlink.Handle) error { return h.LinkDel(br) }); uerr != nil {
				err = errors.Join(err, fmt.Errorf("delete bridge %s again: %w", name, uerr))
			}
		}
		if raised {
			if uerr := e.nl(func(h *netlink.Handle) error { return h.LinkSetDown(nic) }); uerr != nil {
				err = errors.Join(err, fmt.Errorf("set %s down again: %w", nic.Attrs().Name, uerr))
			}
		}
		return nil, err
	}
	switch {
	case errors.As(err, &netlink.LinkNotFoundError{}):
		add := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: mac}}
		if err := e.nl(func(h *netlink.Handle) error { return h.LinkAdd(add) }); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) {
				return undo(fmt.Errorf("create bridge %s: %w (is the bridge kernel module in the image?)", name, err))
			}
			return undo(fmt.Errorf("create bridge %s: %w", name, err))
		}
		created = true
		if br, err = e.linkByName(name); err != nil {
			return undo(err)
		}
	case err != nil:
		return undo(err)
	case br.Type() != "bridge":
		return undo(fmt.Errorf("%s exists and is a %s, not a bridge", name, br.Type()))
	}
	if !bytes.Equal(br.Attrs().HardwareAddr, mac) {
		if err := e.nl(func(h *netlink.Handle) error { return h.LinkSetHardwareAddr(br, mac) }); err != nil {
			return undo(fmt.Errorf("set MAC %s on bridge %s: %w", mac, name, err))
		}
	}
	opts, err := e.bridgeOpts(br)
	if err != nil {
		return undo(err)
	}
	// STP first: the kernel refuses a forward delay below 2 s while STP is on.
	if opts.stp != 0 {
		if err := e.setBridgeOpt(br, nl.IFLA_BR_STP_STATE, 0); err != nil {
			return undo(fmt.Errorf("turn STP off on %s: %w", name, err))
		}
	}
	if opts.forwardDelay != 0 {
		if err := e.setBridgeOpt(br, nl.IFLA_BR_FORWARD_DELAY, 0); err != nil {
			return undo(fmt.Errorf("set forward delay 0 on %s: %w", name, err))
		}
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		if err := e.nl(func(h *netlink.Handle) error { return h.LinkSetUp(br) }); err != nil {
			return undo(fmt.Errorf("set %s up: %w", name, err))
		}
	}
	if nic.Attrs().MasterIndex != br.Attrs().Index {
		if err := e.nl(func(h *netlink.Handle) error { return h.LinkSetMaster(nic, br) }); err != nil {
			return undo(fmt.Errorf("add %s to bridge %s: %w", nic.Attrs().Name, name, err))
		}
		enslaved = true
	}
	return e.linkByName(name)
}

// releasePort takes nic out of its bridge, so it can hold the address itself.
func (e *netEnv) releasePort(nic netlink.Link) error {
	if nic.Attrs().MasterIndex == 0 {
		return nil
	}
	if err := e.nl(func(h *netlink.Handle) error { return h.LinkSetNoMaster(nic) }); err != nil {
		return fmt.Errorf("release %s from its bridge: %w", nic.Attrs().Name, err)
	}
	return nil
}

// removeBridge deletes the bridge name the service no longer uses. A bridge that
// still has ports (VM taps) is kept, without addresses, so the guests on it are
// not cut off; the returned note says so.
func (e *netEnv) removeBridge(name string) (note string, err error) {
	br, err := e.linkByName(name)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if br.Type() != "bridge" {
		return "", nil
	}
	ports, err := e.ports(br)
	if err != nil {
		return "", err
	}
	if len(ports) > 0 {
		if err := e.flushAddrs(br); err != nil {
			return "", err
		}
		return fmt.Sprintf("bridge %s kept without addresses: it still has ports %s", name, strings.Join(ports, ", ")), nil
	}
	if err := e.nl(func(h *netlink.Handle) error { return h.LinkDel(br) }); err != nil {
		return "", fmt.Errorf("delete bridge %s: %w", name, err)
	}
	return "", nil
}

// ports lists the names of the links enslaved to br.
func (e *netEnv) ports(br netlink.Link) ([]string, error) {
	var links []netlink.Link
	if err := e.nl(func(h *netlink.Handle) (err error) {
		links, err = h.LinkList()
		return err
	}); err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []string
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			out = append(out, l.Attrs().Name)
		}
	}
	return out, nil
}

func (e *netEnv) linkByIndex(i int) (netlink.Link, error) {
	var l netlink.Link
	err := e.nl(func(h *netlink.Handle) (err error) {
		l, err = h.LinkByIndex(i)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("link %d: %w", i, err)
	}
	return l, nil
}

func (e *netEnv) linkByName(name string) (netlink.Link, error) {
	var l netlink.Link
	err := e.nl(func(h *netlink.Handle) (err error) {
		l, err = h.LinkByName(name)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", name, err)
	}
	return l, nil
}

// bridgeOpts reads STP and forward delay of br from the kernel (RTM_GETLINK).
func (e *netEnv) bridgeOpts(br netlink.Link) (bridgeOpts, error) {
	var msgs [][]byte
	err := e.do(func() error {
		req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
		msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
		msg.Index = int32(br.Attrs().Index)
		req.AddData(msg)
		var err error
		msgs, err = req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
		return err
	})
	if err != nil {
		return bridgeOpts{}, fmt.Errorf("read bridge %s: %w", br.Attrs().Name, err)
	}
	if len(msgs) != 1 || len(msgs[0]) < unix.SizeofIfInfomsg {
		return bridgeOpts{}, fmt.Errorf("read bridge %s: %d answers", br.Attrs().Name, len(msgs))
	}
	var o bridgeOpts
	found := false
	attrs, err := nl.ParseRouteAttr(msgs[0][unix.SizeofIfInfomsg:])
	if err != nil {
		return bridgeOpts{}, fmt.Errorf("read bridge %s: %w", br.Attrs().Name, err)
	}
	for _, a := range attrs {
		if a.Attr.Type&nl.NLA_TYPE_MASK != unix.IFLA_LINKINFO {
			continue
		}
		info, err := nl.ParseRouteAttr(a.Value)
		if err != nil {
			return bridgeOpts{}, fmt.Errorf("read bridge %s: %w", br.Attrs().Name, err)
		}
		for _, i := range info {
			if i.Attr.Type&nl.NLA_TYPE_MASK != unix.IFLA_INFO_DATA {
				continue
			}
			data, err := nl.ParseRouteAttr(i.Value)
			if err != nil {
				return bridgeOpts{}, fmt.Errorf("read bridge %s: %w", br.Attrs().Name, err)
			}
			for _, d := range data {
				if len(d.Value) < 4 {
					continue
				}
				switch d.Attr.Type & nl.NLA_TYPE_MASK {
				case nl.IFLA_BR_STP_STATE:
					o.stp, found = native.Uint32(d.Value), true
				case nl.IFLA_BR_FORWARD_DELAY:
					o.forwardDelay = native.Uint32(d.Value)
				}
			}
		}
	}
	if !found {
		return bridgeOpts{}, fmt.Errorf("read bridge %s: the kernel reported no bridge attributes", br.Attrs().Name)
	}
	return o, nil
}

// setBridgeOpt sets one u32 IFLA_BR_* attribute of br (RTM_NEWLINK on an existing
// link changes only what it carries).
func (e *netEnv) setBridgeOpt(br netlink.Link, attr int, v uint32) error {
	return e.do(func() error {
		req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
		msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
		msg.Index = int32(br.Attrs().Index)
		req.AddData(msg)
		info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
		info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("bridge"))
		data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
		data.AddRtAttr(attr, nl.Uint32Attr(v))
		req.AddData(info)
		_, err := req.Execute(unix.NETLINK_ROUTE, 0)
		return err
	})
}

var native = nl.NativeEndian()

// verifyBridge reports every way br and its port nic differ from the layout
// ensureBridge makes.
func (e *netEnv) verifyBridge(br, nic netlink.Link) []string {
	var bad []string
	name := br.Attrs().Name
	cur, err := e.linkByName(name)
	if err != nil {
		return []string{err.Error()}
	}
	if cur.Type() != "bridge" {
		return []string{fmt.Sprintf("%s is a %s, not a bridge", name, cur.Type())}
	}
	port, err := e.linkByName(nic.Attrs().Name)
	if err != nil {
		return []string{err.Error()}
	}
	if port.Attrs().MasterIndex != cur.Attrs().Index {
		bad = append(bad, fmt.Sprintf("%s is not a port of %s", port.Attrs().Name, name))
	}
	if port.Attrs().Flags&net.FlagUp == 0 {
		bad = append(bad, port.Attrs().Name+" is down")
	}
	if !bytes.Equal(cur.Attrs().HardwareAddr, port.Attrs().HardwareAddr) {
		bad = append(bad, fmt.Sprintf("%s has MAC %s, want %s's %s", name, cur.Attrs().HardwareAddr, port.Attrs().Name, port.Attrs().HardwareAddr))
	}
	if as, err := e.addrs(port); err != nil {
		bad = append(bad, err.Error())
	} else if len(as) > 0 {
		var have []string
		for _, a := range as {
			have = append(have, a.IPNet.String())
		}
		bad = append(bad, fmt.Sprintf("port %s holds addresses [%s], want none", port.Attrs().Name, strings.Join(have, " ")))
	}
	o, err := e.bridgeOpts(cur)
	switch {
	case err != nil:
		bad = append(bad, err.Error())
	case o.stp != 0 || o.forwardDelay != 0:
		bad = append(bad, fmt.Sprintf("%s has stp_state %d forward_delay %d, want 0 and 0", name, o.stp, o.forwardDelay))
	}
	return bad
}

// flushAddrs removes every IPv4 address of l.
func (e *netEnv) flushAddrs(l netlink.Link) error {
	as, err := e.addrs(l)
	if err != nil {
		return err
	}
	for _, a := range as {
		if err := e.nl(func(h *netlink.Handle) error { return h.AddrDel(l, &a) }); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("flush %s from %s: %w", a.IPNet, l.Attrs().Name, err)
		}
	}
	return nil
}
