package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/vishvananda/netlink"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent/hypervisor"
	"github.com/quantix/quantix/agent/nodeos"
)

// FileConfig is /quantix/node/agent.toml. The installer and the test lab write it
// with Save; every key is optional.
type FileConfig struct {
	// ControlPlane is the vDC URL, e.g. "https://vdc.example:8443", or several
	// separated by commas (vDCs sharing one database, docs/design.md §17): the
	// agent stays on one and moves to the next when it fails.
	ControlPlane string `toml:"control_plane,omitempty"`
	// JoinToken lets a new node register.
	JoinToken string `toml:"join_token,omitempty"`
	// Interface names the management interface (name or MAC address); "" or
	// "auto" chooses automatically.
	Interface string `toml:"interface,omitempty"`
	// LibvirtURI is the local libvirt URI (default qemu:///system).
	LibvirtURI string `toml:"libvirt_uri,omitempty"`
	// HTTPListen is the status endpoint address, e.g. "127.0.0.1:9101"; "" = off.
	HTTPListen string `toml:"http_listen,omitempty"`
	// Labels are sent with the registration.
	Labels map[string]string `toml:"labels,omitempty"`
	// ImagesDir caches the vDC images the node's VMs use (default
	// quantix.ImageCacheDir, on QUANTIX-DATA).
	ImagesDir string `toml:"images_dir,omitempty"`
	// InsecurePlainHTTP allows an http:// control_plane: the node secret then
	// travels in clear (labs only; the vDC must allow it too, agent_plain_http).
	InsecurePlainHTTP bool `toml:"insecure_plain_http,omitempty"`
}

// Load reads agent.toml strictly. A missing file is an empty FileConfig and no error:
// a node may be configured by the kernel command line or flags alone.
func Load(path string) (FileConfig, error) {
	var f FileConfig
	err := quantix.DecodeTOMLFile(path, &f)
	if errors.Is(err, fs.ErrNotExist) {
		return FileConfig{}, nil
	}
	if err != nil {
		return FileConfig{}, fmt.Errorf("%w: %w", quantix.ErrConfig, err)
	}
	if err := f.Validate(); err != nil {
		return FileConfig{}, fmt.Errorf("%w: %s: %w", quantix.ErrConfig, path, err)
	}
	return f, nil
}

// Validate checks the values that are set, and that the transport is TLS with a
// pinned join token unless insecure_plain_http says plain.
func (f FileConfig) Validate() error {
	if err := f.ValidateFields(); err != nil {
		return err
	}
	if strings.HasPrefix(f.ControlPlane, "http://") && !f.InsecurePlainHTTP {
		return fmt.Errorf("control_plane %s is plain HTTP, which would send the node secret in clear: use https:// "+
			"(the vDC's port speaks TLS) or, in a lab, set insecure_plain_http = true", f.ControlPlane)
	}
	if f.JoinToken != "" && !f.InsecurePlainHTTP {
		if _, _, err := quantix.ParseJoinToken(f.JoinToken); err != nil {
			return fmt.Errorf("join_token: %w", err)
		}
	}
	return nil
}

// ValidateFields checks each value that is set on its own: for a part of the
// configuration (the flags), whose transport is checked once merged.
func (f FileConfig) ValidateFields() error {
	if f.ControlPlane != "" {
		if err := validateControlPlane(f.ControlPlane); err != nil {
			return fmt.Errorf("control_plane: %w", err)
		}
	}
	if strings.ContainsAny(f.JoinToken, " \t\r\n") {
		return fmt.Errorf("join_token: contains white space")
	}
	if f.LibvirtURI != "" {
		if _, _, err := hypervisor.ParseURI(f.LibvirtURI); err != nil {
			return fmt.Errorf("libvirt_uri: %w", err)
		}
	}
	if f.HTTPListen != "" {
		if _, _, err := net.SplitHostPort(f.HTTPListen); err != nil {
			return fmt.Errorf("http_listen %q: want host:port, e.g. 127.0.0.1:9101: %w", f.HTTPListen, err)
		}
	}
	if f.ImagesDir != "" && !filepath.IsAbs(f.ImagesDir) {
		return fmt.Errorf("images_dir %q: want an absolute path, e.g. %s", f.ImagesDir, quantix.ImageCacheDir)
	}
	if strings.ContainsAny(f.Interface, " \t/") {
		return fmt.Errorf("interface %q: not an interface name or MAC address", f.Interface)
	}
	for k, v := range f.Labels {
		if k == "" || len(k) > 63 || strings.ContainsAny(k, " \t\r\n=") {
			return fmt.Errorf("labels: key %q must be 1-63 characters without spaces or '='", k)
		}
		if len(v) > 253 || strings.ContainsAny(v, "\r\n") {
			return fmt.Errorf("labels.%s: value must be at most 253 characters on one line", k)
		}
	}
	return nil
}

// Save validates f and writes it to path atomically (mode 0600: it may hold the
// join token).
func Save(path string, f FileConfig) error {
	if err := f.Validate(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	var b bytes.Buffer
	b.WriteString("# Quantix node agent configuration (qx-node).\n")
	if err := toml.NewEncoder(&b).Encode(f); err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return quantix.WriteFileAtomic(path, b.Bytes(), 0o600)
}

func validateControlPlane(s string) error {
	_, err := quantix.ParseVDCURLs(s)
	return err
}

// Config is everything a Service needs. Build it with Resolve, or directly in tests.
type Config struct {
	FileConfig
	// Hostname is the node's name; "" takes the kernel's (os.Hostname).
	Hostname string
	// StateDir holds identity.toml (default /quantix/node).
	StateDir string
	// ProductUUIDPath is the SMBIOS product UUID file (default DefaultProductUUIDPath).
	ProductUUIDPath string
	// Once registers, sends the full state and returns (qx-node --register).
	Once bool
	// Netlink is the netlink handle used to find the management address; nil uses
	// the agent's own network namespace. Tests pass a handle into a namespace.
	Netlink *netlink.Handle
	// ConsoleDir holds the VMs' serial logs (default quantix.VMConsoleDir).
	ConsoleDir string
	// DesiredWait is how long the desired long-poll is held (55 s).
	DesiredWait time.Duration
	// OS configures what heartbeats say about the running OS and how upgrade
	// orders are carried out (the zero value: the real paths and init socket);
	// its Fetcher is the agent's channel.
	OS nodeos.Config
	// Stdout receives the ready marker lines (init reads them); nil = os.Stdout.
	Stdout io.Writer

	// Timing; zero values take the defaults in parentheses.
	RegisterBackoffMin time.Duration // first retry after a failed registration (1 s)
	RegisterBackoffMax time.Duration // the longest retry delay (60 s)
	RefusedRetry       time.Duration // retry after 401/409, which need the operator (60 s)
	FullSyncEvery      time.Duration // full state PUT as a safety net (10 min)
	RequestTimeout     time.Duration // one HTTP request to the vDC (15 s)
	LibvirtBackoffMax  time.Duration // the longest libvirt reconnect delay (30 s)
}

// Cmdline holds what the kernel command line says for the agent.
type Cmdline struct {
	VDC, Token, Hostname string
}

// CmdlineFrom picks the agent's parameters from a parsed kernel command line.
func CmdlineFrom(c quantix.Cmdline) Cmdline {
	return Cmdline{VDC: c.Value(quantix.ParamVDC), Token: c.Value(quantix.ParamToken), Hostname: c.Value(quantix.ParamHostname)}
}

// Resolve merges the configuration sources, lowest precedence first: the image
// defaults, the kernel command line, agent.toml and the flags that were given.
// flags holds only the flags set on the command line.
func Resolve(cmdline Cmdline, file FileConfig, flags FileConfig) Config {
	c := Config{FileConfig: FileConfig{LibvirtURI: hypervisor.DefaultURI}}
	over := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	over(&c.ControlPlane, cmdline.VDC)
	over(&c.JoinToken, cmdline.Token)
	for _, f := range []FileConfig{file, flags} {
		over(&c.ControlPlane, f.ControlPlane)
		over(&c.JoinToken, f.JoinToken)
		over(&c.Interface, f.Interface)
		over(&c.LibvirtURI, f.LibvirtURI)
		over(&c.HTTPListen, f.HTTPListen)
		over(&c.ImagesDir, f.ImagesDir)
		if f.Labels != nil {
			c.Labels = f.Labels
		}
		c.InsecurePlainHTTP = c.InsecurePlainHTTP || f.InsecurePlainHTTP
	}
	return c
}

// ResolveHostname returns the node's hostname: configured, else the kernel's (init
// sets it from /quantix/hostname or quantix.hostname=), else the kernel command
// line's when the kernel has none yet. It is validated and in lower case.
func ResolveHostname(configured string, osHostname func() (string, error), cmdline string) (string, error) {
	name := configured
	if name == "" {
		h, err := osHostname()
		if err == nil && !placeholderHostname(h) {
			name = h
		}
	}
	if name == "" {
		name = cmdline
	}
	if name == "" {
		return "", fmt.Errorf("%w: the host has no hostname: set one in %s or with %s= on the kernel command line", quantix.ErrConfig, quantix.HostnameFile, quantix.ParamHostname)
	}
	n, err := quantix.NormalizeHostname(name)
	if err != nil {
		return "", fmt.Errorf("%w: hostname: %w", quantix.ErrConfig, err)
	}
	return n, nil
}

func placeholderHostname(h string) bool {
	switch strings.ToLower(h) {
	case "", "(none)", "localhost", "localhost.localdomain":
		return true
	}
	return false
}

// withDefaults validates c and fills in defaults.
func (c Config) withDefaults() (Config, error) {
	if c.ControlPlane == "" {
		return c, fmt.Errorf("%w: no vDC URL: set --control-plane, control_plane in %s or %s= on the kernel command line", quantix.ErrConfig, quantix.AgentConfig, quantix.ParamVDC)
	}
	if err := c.FileConfig.Validate(); err != nil {
		return c, fmt.Errorf("%w: %w", quantix.ErrConfig, err)
	}
	urls, err := quantix.ParseVDCURLs(c.ControlPlane)
	if err != nil {
		return c, fmt.Errorf("%w: control_plane: %w", quantix.ErrConfig, err)
	}
	c.ControlPlane = strings.Join(urls, ",")
	if c.LibvirtURI == "" {
		c.LibvirtURI = hypervisor.DefaultURI
	}
	if c.Interface == "auto" {
		c.Interface = ""
	}
	if c.StateDir == "" {
		c.StateDir = quantix.NodeStateDir
	}
	if c.ProductUUIDPath == "" {
		c.ProductUUIDPath = DefaultProductUUIDPath
	}
	if c.Stdout == nil {
		c.Stdout = os.Stdout
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.RegisterBackoffMin, time.Second)
	def(&c.RegisterBackoffMax, 60*time.Second)
	def(&c.RefusedRetry, 60*time.Second)
	def(&c.FullSyncEvery, 10*time.Minute)
	def(&c.RequestTimeout, 15*time.Second)
	def(&c.LibvirtBackoffMax, 30*time.Second)
	return c, nil
}

// IdentityPath is identity.toml inside the state folder.
func (c Config) IdentityPath() string {
	return filepath.Join(c.StateDir, filepath.Base(quantix.IdentityFile))
}
