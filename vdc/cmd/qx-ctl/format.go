package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/quantix/quantix"
)

// table writes aligned columns. Cells are cleaned of control characters: VM and
// pool names come from the hosts, and an escape sequence in one must not reach the
// operator's terminal (nor a tab or newline break the columns).
type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	if len(header) > 0 {
		t.row(header...)
	}
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		cells[i] = cell(c)
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// cell replaces control characters with '?' and shows an empty value as "-".
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("write json: %w", err)
	}
	return nil
}

// phaseWord is the phase as people say it.
func phaseWord(p string) string {
	switch p {
	case quantix.PhaseNotReady:
		return "not ready"
	case "":
		return "unknown"
	}
	return p
}

func hypervisorWord(s string) string {
	if s == "" {
		return quantix.HypervisorUnknown
	}
	return s
}

func hypervisorDetail(h quantix.Hypervisor) string {
	s := hypervisorWord(h.State)
	var extra []string
	if h.Version != "" {
		extra = append(extra, "libvirt "+h.Version)
	}
	if h.QEMUVersion != "" {
		extra = append(extra, "QEMU "+h.QEMUVersion)
	}
	if h.Accelerator != "" {
		extra = append(extra, h.Accelerator)
	}
	if h.Persistent != nil && !*h.Persistent {
		extra = append(extra, "VMs in RAM (no QUANTIX-DATA)")
	}
	if h.URI != "" {
		extra = append(extra, h.URI)
	}
	if h.Reason != "" {
		extra = append(extra, h.Reason)
	}
	if len(extra) > 0 {
		s += " (" + strings.Join(extra, ", ") + ")"
	}
	return s
}

// span is a duration in one unit people read at a glance: 12s, 5m, 3h, 2d.
func span(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}

// ago is the age of a past moment, "12s ago". Server timestamps a little ahead of
// the local clock read "0s ago".
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	return span(d) + " ago"
}

// until is the time left to a future moment, "in 24h", or "expired 3m ago".
func until(now, t time.Time) string {
	d := t.Sub(now)
	if d < 0 {
		return "expired " + span(-d) + " ago"
	}
	return "in " + span(d.Round(time.Second))
}

func heartbeatAge(now time.Time, t *time.Time) string {
	if t == nil {
		return "never"
	}
	return ago(now, *t)
}

// stamp is an absolute time in UTC.
func stamp(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// gib shows bytes in GiB with one decimal.
func gib(b int64) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
}

// cpuCell is the node's logical CPUs and, when known, their use: "4 (12%)".
func cpuCell(n quantix.Node) string {
	s := "-"
	if n.CPU != nil && n.CPU.Threads > 0 {
		s = fmt.Sprint(n.CPU.Threads)
	} else if n.CPU != nil && n.CPU.Cores > 0 {
		s = fmt.Sprint(n.CPU.Cores)
	}
	if n.CPUPercent != nil {
		s += fmt.Sprintf(" (%.0f%%)", *n.CPUPercent)
	}
	return s
}

func cpuDetail(n quantix.Node) string {
	var parts []string
	if c := n.CPU; c != nil {
		if c.Model != "" {
			parts = append(parts, c.Model)
		}
		for _, f := range []struct {
			n    int
			unit string
		}{{c.Sockets, "socket"}, {c.Cores, "core"}, {c.Threads, "thread"}} {
			if f.n > 0 {
				parts = append(parts, plural(f.n, f.unit))
			}
		}
	}
	if n.CPUPercent != nil {
		parts = append(parts, fmt.Sprintf("%.1f%% used", *n.CPUPercent))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

func plural(n int, unit string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s", unit)
	}
	return fmt.Sprintf("%d %ss", n, unit)
}

// memoryCell is "used/total GiB", or the total alone before the first heartbeat
// that reports use.
func memoryCell(n quantix.Node) string {
	switch {
	case n.MemoryBytes > 0 && n.MemoryUsedBytes != nil:
		return fmt.Sprintf("%.1f/%.1f GiB", float64(*n.MemoryUsedBytes)/(1<<30), float64(n.MemoryBytes)/(1<<30))
	case n.MemoryBytes > 0:
		return gib(n.MemoryBytes)
	case n.MemoryUsedBytes != nil:
		return gib(*n.MemoryUsedBytes) + " used"
	}
	return "-"
}
