package quantix

import (
	"fmt"
	"os"
	"slices"
	"strings"
)

// Kernel command line parameters Quantix reads (docs/design.md §3). The network service
// parses the value of "ip" itself.
const (
	ParamIP       = "ip"
	ParamVDC      = "quantix.vdc"
	ParamToken    = "quantix.token"
	ParamHostname = "quantix.hostname"
	ParamInstall  = "quantix.install"
	ParamConsole  = "quantix.console"
	// ParamDisk pins an installed system to its own disk: the GPT disk GUID (blkid's
	// PTUUID) of the disk it was installed on. init mounts QUANTIX-CFG and
	// QUANTIX-DATA only from that disk, so a stale disk can never hijack the boot.
	ParamDisk = "quantix.disk"
)

// Cmdline is a parsed kernel command line: key=value parameters (the last one wins)
// and bare flags (value "").
type Cmdline struct {
	params map[string]string
	order  []string
}

// ReadCmdline reads /proc/cmdline.
func ReadCmdline() (Cmdline, error) {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return Cmdline{}, fmt.Errorf("read kernel command line: %w", err)
	}
	return ParseCmdline(string(b)), nil
}

// ParseCmdline splits a kernel command line by the kernel's own rules: parameters
// separated by white space, double quotes group (quantix.hostname="a b" is one
// parameter), everything after "--" is for init and ignored here.
func ParseCmdline(s string) Cmdline {
	c := Cmdline{params: map[string]string{}}
	var fields []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n' || r == '\r'):
			if have {
				fields = append(fields, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		fields = append(fields, cur.String())
	}
	for _, f := range fields {
		if f == "--" {
			break
		}
		k, v, _ := strings.Cut(f, "=")
		if _, seen := c.params[k]; !seen {
			c.order = append(c.order, k)
		}
		c.params[k] = v
	}
	return c
}

// Get returns the value of key and whether it was present.
func (c Cmdline) Get(key string) (string, bool) {
	v, ok := c.params[key]
	return v, ok
}

// Value returns the value of key, or "".
func (c Cmdline) Value(key string) string { return c.params[key] }

// Keys returns the parameter names in the order they first appeared.
func (c Cmdline) Keys() []string { return append([]string(nil), c.order...) }

// Without returns c without the parameters keys.
func (c Cmdline) Without(keys ...string) Cmdline {
	out := Cmdline{params: map[string]string{}}
	for _, k := range c.order {
		if !slices.Contains(keys, k) {
			out.params[k] = c.params[k]
			out.order = append(out.order, k)
		}
	}
	return out
}

// With returns c with key set to value (appended when it was not there).
func (c Cmdline) With(key, value string) Cmdline {
	out := c.Without()
	if _, ok := out.params[key]; !ok {
		out.order = append(out.order, key)
	}
	out.params[key] = value
	return out
}

// String formats c as a kernel command line: the parameters in the order they
// first appeared, each once with its last value, quoted when it holds white space.
func (c Cmdline) String() string {
	var s []string
	for _, k := range c.order {
		v := c.params[k]
		if v == "" {
			s = append(s, k)
			continue
		}
		if strings.ContainsAny(v, " \t") {
			v = `"` + v + `"`
		}
		s = append(s, k+"="+v)
	}
	return strings.Join(s, " ")
}
