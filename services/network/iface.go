package network

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
)

// ErrNoInterface is wrapped when no interface matches the settings.
var ErrNoInterface = errors.New("no such interface")

// netlink link types that are never the management interface by automatic choice.
var virtualTypes = map[string]bool{
	"bridge": true, "tuntap": true, "tun": true, "veth": true, "dummy": true,
	"bond": true, "vlan": true, "macvlan": true, "macvtap": true, "ipvlan": true,
	"vxlan": true, "gre": true, "gretap": true, "ipip": true, "sit": true, "wireguard": true,
	"ifb": true, "vrf": true, "geneve": true, "nlmon": true, "team": true,
}

// kind ranks automatic candidates: lower is better; -1 is not a candidate. ours
// holds the indexes of the bridges the service manages: their ports are candidates.
func (e *netEnv) linkRank(l netlink.Link, ours map[int]bool, sysfs string) (rank int, why string) {
	a := l.Attrs()
	dir := filepath.Join(sysfs, "class", "net", a.Name)
	switch {
	case a.Flags&net.FlagLoopback != 0:
		return -1, "loopback"
	case virtualTypes[l.Type()]:
		return -1, l.Type()
	case a.MasterIndex != 0 && !ours[a.MasterIndex]:
		return -1, "enslaved to another interface"
	case len(a.HardwareAddr) != 6:
		return -1, "not ethernet"
	}
	if _, err := os.Stat(filepath.Join(dir, "device")); err != nil {
		return -1, "virtual (no " + filepath.Join(dir, "device") + ")"
	}
	if t, err := os.ReadFile(filepath.Join(dir, "type")); err == nil && strings.TrimSpace(string(t)) != "1" {
		return -1, "link type " + strings.TrimSpace(string(t))
	}
	for _, w := range []string{"wireless", "phy80211"} {
		if _, err := os.Stat(filepath.Join(dir, w)); err == nil {
			return 1, "wifi"
		}
	}
	if u, err := os.ReadFile(filepath.Join(dir, "uevent")); err == nil && strings.Contains(string(u), "DEVTYPE=wlan") {
		return 1, "wifi"
	}
	return 0, "ethernet"
}

// findLink resolves an interface selector (name, MAC, "auto") to a link. Automatic
// choice takes physical ethernet before wifi, then an interface with carrier, then the
// lowest index; it skips loopback, bridges, tun/tap, veth, dummy, bonds and their
// slaves and anything without a device in sysfs. bridges names the bridges the
// service manages: a port of one is still a candidate, and one of them, carrying
// its port's MAC, never matches a MAC selector.
func (e *netEnv) findLink(sel string, bridges []string, sysfs string) (netlink.Link, error) {
	if sel != InterfaceAuto && !strings.Contains(sel, ":") {
		var l netlink.Link
		err := e.nl(func(h *netlink.Handle) (err error) {
			l, err = h.LinkByName(sel)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrNoInterface, sel, err)
		}
		return l, nil
	}
	var links []netlink.Link
	err := e.nl(func(h *netlink.Handle) (err error) {
		links, err = h.LinkList()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	ours := map[int]bool{}
	for _, l := range links {
		if l.Type() == "bridge" && slices.Contains(bridges, l.Attrs().Name) {
			ours[l.Attrs().Index] = true
		}
	}
	if sel != InterfaceAuto {
		var match []netlink.Link
		for _, l := range links {
			if ours[l.Attrs().Index] {
				continue
			}
			if strings.EqualFold(l.Attrs().HardwareAddr.String(), sel) {
				match = append(match, l)
			}
		}
		// A bond or bridge shares its port's MAC: prefer the one not enslaved.
		sort.SliceStable(match, func(i, j int) bool {
			return match[i].Attrs().MasterIndex == 0 && match[j].Attrs().MasterIndex != 0
		})
		if len(match) == 0 {
			return nil, fmt.Errorf("%w: no interface has MAC %s", ErrNoInterface, sel)
		}
		return match[0], nil
	}
	type cand struct {
		l       netlink.Link
		rank    int
		carrier bool
	}
	var cs []cand
	var skipped []string
	for _, l := range links {
		r, why := e.linkRank(l, ours, sysfs)
		if r < 0 {
			skipped = append(skipped, l.Attrs().Name+": "+why)
			continue
		}
		cs = append(cs, cand{l: l, rank: r, carrier: l.Attrs().OperState == netlink.OperUp})
	}
	if len(cs) == 0 {
		return nil, fmt.Errorf("%w: no physical ethernet or wifi interface (skipped %s)", ErrNoInterface, strings.Join(skipped, ", "))
	}
	sort.SliceStable(cs, func(i, j int) bool {
		a, b := cs[i], cs[j]
		if a.rank != b.rank {
			return a.rank < b.rank
		}
		if a.carrier != b.carrier {
			return a.carrier
		}
		return a.l.Attrs().Index < b.l.Attrs().Index
	})
	return cs[0].l, nil
}
