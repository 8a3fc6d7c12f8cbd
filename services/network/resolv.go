package network

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/quantix/quantix"
)

func resolvConf(source string, dns []net.IP, search []string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# written by qx-net (source %s); change network.toml, not this file\n", source)
	if len(search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(search, " "))
	}
	for i, ip := range dns {
		if i == 3 { // resolv.conf(5): MAXNS
			break
		}
		fmt.Fprintf(&b, "nameserver %s\n", ip)
	}
	return b.Bytes()
}

// writeResolv replaces path atomically and reads it back.
func writeResolv(path, source string, dns []net.IP, search []string) error {
	want := resolvConf(source, dns, search)
	if err := quantix.WriteFileAtomic(path, want, 0o644); err != nil {
		return err
	}
	got, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read back %s: %w", path, err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("read back %s: content differs from what was written", path)
	}
	return nil
}
