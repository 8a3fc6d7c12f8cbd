package agent

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/quantix/quantix"
)

// cpuInfo reads the processor model and counts from /proc/cpuinfo.
func cpuInfo() *quantix.CPUInfo {
	info := &quantix.CPUInfo{Threads: runtime.NumCPU()}
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return info
	}
	sockets := map[string]bool{}
	cores := map[string]bool{}
	phys := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "model name":
			if info.Model == "" {
				info.Model = v
			}
		case "physical id":
			phys = v
			sockets[v] = true
		case "core id":
			cores[phys+"/"+v] = true
		}
	}
	info.Sockets, info.Cores = len(sockets), len(cores)
	return info
}

// memInfo returns total and used (total minus available) memory in bytes.
func memInfo() (total, used int64, ok bool) {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, 0, false
	}
	var avail int64 = -1
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "MemTotal:":
			total = n * 1024
		case "MemAvailable:":
			avail = n * 1024
		}
	}
	if total == 0 || avail < 0 {
		return 0, 0, false
	}
	return total, total - avail, true
}

// cpuSampler turns /proc/stat counters into a busy percentage between two calls.
type cpuSampler struct{ busy, total uint64 }

func (c *cpuSampler) percent() (float64, bool) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, false
	}
	var total, idle uint64
	for i, s := range f[1:] {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, false
		}
		total += n
		if i == 3 || i == 4 { // idle, iowait
			idle += n
		}
	}
	busy := total - idle
	prevBusy, prevTotal := c.busy, c.total
	c.busy, c.total = busy, total
	if prevTotal == 0 || total <= prevTotal {
		return 0, false
	}
	return 100 * float64(busy-prevBusy) / float64(total-prevTotal), true
}
