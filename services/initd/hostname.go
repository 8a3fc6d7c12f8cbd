package initd

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/quantix/quantix"
)

// ChooseHostname applies docs/design.md §3 precedence, highest first: the QUANTIX-CFG file
// (hostnameFile), quantix.hostname= on the kernel command line, the hostname field of
// ip=, the image default. An invalid value is reported in warnings and skipped.
func ChooseHostname(hostnameFile string, cmdline quantix.Cmdline, imageDefault string) (name, source string, warnings []string) {
	if b, err := os.ReadFile(hostnameFile); err == nil {
		v := strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
		if n, err := quantix.NormalizeHostname(v); err == nil {
			return n, hostnameFile, warnings
		} else {
			warnings = append(warnings, fmt.Sprintf("%s: %v", hostnameFile, err))
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		warnings = append(warnings, fmt.Sprintf("%s: %v", hostnameFile, err))
	}
	if v, ok := cmdline.Get(quantix.ParamHostname); ok {
		if n, err := quantix.NormalizeHostname(v); err == nil {
			return n, "kernel command line " + quantix.ParamHostname, warnings
		} else {
			warnings = append(warnings, fmt.Sprintf("%s=: %v", quantix.ParamHostname, err))
		}
	}
	if v, ok := cmdline.Get(quantix.ParamIP); ok {
		// ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>
		if f := strings.Split(v, ":"); len(f) >= 5 && f[4] != "" {
			if n, err := quantix.NormalizeHostname(f[4]); err == nil {
				return n, "kernel command line ip=", warnings
			} else {
				warnings = append(warnings, fmt.Sprintf("ip= hostname: %v", err))
			}
		}
	}
	return strings.ToLower(imageDefault), "image default", warnings
}
