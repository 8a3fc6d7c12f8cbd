package quantix

import (
	"fmt"
	"strconv"
	"strings"
)

// MarkerPrefix starts every console marker line. Markers are how init, the services
// and the test lab agree on what happened during boot: one line each, machine-readable.
const MarkerPrefix = "QUANTIX: "

// Marker kinds (the first word after MarkerPrefix).
const (
	MarkerBoot         = "boot"          // QUANTIX: boot image=<name> version=<v>
	MarkerReady        = "ready"         // QUANTIX: ready service=<name> ...
	MarkerBootComplete = "boot-complete" // QUANTIX: boot-complete seconds=<s>
	MarkerFatal        = "fatal"         // QUANTIX: fatal service=<name> err=<text>
	MarkerWarning      = "warning"       // QUANTIX: warning service=<name> msg=<text>
	// MarkerInstallComplete: QUANTIX: install-complete target=<dev> hostname=<h>
	// disk_guid=<guid> seconds=<s> after=<poweroff|reboot>
	MarkerInstallComplete = "install-complete"
	// MarkerAdminToken: QUANTIX: admin-token service=vdc token=<token> ..., printed
	// once when the vDC generated its admin token.
	MarkerAdminToken = "admin-token"
	// MarkerBootSlot: QUANTIX: boot-slot slot=<a|b> trial=<0|1> [tries_left=<n>]
	// env=<file>, echoed by GRUB on the installed disk when it chose the slot.
	MarkerBootSlot = "boot-slot"
	// MarkerSlot: QUANTIX: slot slot=<a|b> state=<SlotTrial|SlotGood|SlotFailed|
	// SlotRolledBack> ..., init's verdict on an A/B trial boot (docs/design.md §16).
	MarkerSlot = "slot"
)

// Marker is one parsed console marker.
type Marker struct {
	Kind   string
	Fields map[string]string
	// Keys keeps the field order as printed.
	Keys []string
}

// Get returns the value of field key, or "".
func (m Marker) Get(key string) string { return m.Fields[key] }

// String formats the marker as its console line (without newline).
func (m Marker) String() string {
	var b strings.Builder
	b.WriteString(MarkerPrefix)
	b.WriteString(m.Kind)
	for _, k := range m.Keys {
		b.WriteByte(' ')
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(quoteMarkerValue(m.Fields[k]))
	}
	return b.String()
}

// FormatMarker builds a marker line from a kind and key/value pairs:
// FormatMarker("ready", "service", "network", "addr", "10.0.0.5/24").
// Values holding spaces, quotes or '=' are quoted with strconv.Quote.
// It panics on an odd number of key/value arguments: that is a programming error.
func FormatMarker(kind string, kv ...string) string {
	if len(kv)%2 != 0 {
		panic("quantix.FormatMarker: odd number of key/value arguments")
	}
	m := Marker{Kind: kind, Fields: make(map[string]string, len(kv)/2)}
	for i := 0; i < len(kv); i += 2 {
		m.Keys = append(m.Keys, kv[i])
		m.Fields[kv[i]] = kv[i+1]
	}
	return m.String()
}

// States in MarkerSlot.
const (
	SlotTrial      = "trial"       // the trial's health gates are being checked: deadline=<s>
	SlotGood       = "good"        // every gate passed; the slot is committed: seconds=<s>
	SlotFailed     = "failed"      // a gate failed: gate=<name> err=<text>; rebooting into the other slot
	SlotRolledBack = "rolled-back" // booted after the trial of from=<slot> failed
)

// SlotMarker reports init's view of the booted A/B slot.
func SlotMarker(slot, state string, kv ...string) string {
	return FormatMarker(MarkerSlot, append([]string{"slot", slot, "state", state}, kv...)...)
}

// BootMarker is the first line init prints.
func BootMarker(image, version string) string {
	return FormatMarker(MarkerBoot, "image", image, "version", version)
}

// ReadyMarker says that a service is ready; kv adds service-specific fields
// (network: iface, addr, source; agent: node_id, registration; vdc: url).
func ReadyMarker(service string, kv ...string) string {
	return FormatMarker(MarkerReady, append([]string{"service", service}, kv...)...)
}

// BootCompleteMarker says that every service of the image is ready.
func BootCompleteMarker(seconds float64) string {
	return FormatMarker(MarkerBootComplete, "seconds", strconv.FormatFloat(seconds, 'f', 2, 64))
}

// FatalMarker says that a service failed in a way the supervisor cannot fix.
func FatalMarker(service string, err error) string {
	return FormatMarker(MarkerFatal, "service", service, "err", err.Error())
}

// WarningMarker says something the operator must know (e.g. nothing will persist).
func WarningMarker(service, msg string) string {
	return FormatMarker(MarkerWarning, "service", service, "msg", msg)
}

// ParseMarker parses a console line. It finds the marker anywhere in the line, so
// kernel timestamps or serial noise before it do not matter.
func ParseMarker(line string) (Marker, bool) {
	i := strings.Index(line, MarkerPrefix)
	if i < 0 {
		return Marker{}, false
	}
	rest := strings.TrimRight(line[i+len(MarkerPrefix):], "\r\n")
	kind, rest, _ := strings.Cut(rest, " ")
	if kind == "" {
		return Marker{}, false
	}
	m := Marker{Kind: kind, Fields: map[string]string{}}
	for rest = strings.TrimLeft(rest, " "); rest != ""; rest = strings.TrimLeft(rest, " ") {
		key, after, ok := strings.Cut(rest, "=")
		if !ok || key == "" || strings.ContainsRune(key, ' ') {
			return Marker{}, false
		}
		var val string
		if strings.HasPrefix(after, `"`) {
			q, err := strconv.QuotedPrefix(after)
			if err != nil {
				return Marker{}, false
			}
			val, _ = strconv.Unquote(q)
			rest = after[len(q):]
		} else {
			val, rest, _ = strings.Cut(after, " ")
		}
		m.Keys = append(m.Keys, key)
		m.Fields[key] = val
	}
	return m, true
}

func quoteMarkerValue(v string) string {
	if v == "" || strings.ContainsAny(v, " \t\"=\n\r\\") {
		return strconv.Quote(v)
	}
	return v
}

// MarkerError is returned by helpers that found a fatal marker.
type MarkerError struct{ Marker Marker }

func (e *MarkerError) Error() string {
	return fmt.Sprintf("service %s failed: %s", e.Marker.Get("service"), e.Marker.Get("err"))
}
