// Command qx-ctl manages a Quantix vDC from the shell through its admin API v1: list,
// show, delete and maintain nodes, list VMs and storage pools, create join tokens.
// Output is an aligned table for people or the API's JSON objects for scripts, and
// the exit status tells scripts what went wrong (see usage).
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/client"
)

// Exit statuses scripts can rely on.
const (
	exitOK          = 0
	exitFailure     = 1 // the vDC answered an error, or anything else failed
	exitUsage       = 2 // bad flag, unknown command, missing or extra argument
	exitNotFound    = 3 // 404, or no node with that id or hostname
	exitAuth        = 4 // 401, or no admin token
	exitUnreachable = 5 // connection refused, timeout, 502/503/504
)

// Environment variables.
const (
	envURL       = "QX_VDC_URL"
	envToken     = "QX_ADMIN_TOKEN"
	envTokenFile = "QX_ADMIN_TOKEN_FILE"
)

const (
	defaultURL       = "http://127.0.0.1:8080"
	defaultTokenFile = quantix.ConfigDir + "/vdc/admin-token"
	defaultTimeout   = 30 * time.Second
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: qx-ctl [global flags] <command> [flags] [arguments]

Commands:
  nodes list [--phase P[,P...]] [--search S]   the registry, sorted by hostname
  nodes show <id|hostname> [--events N]        a node with its events, VMs and pools
  nodes delete <id|hostname> [--yes] [--force] remove a node (asks on a terminal);
                                               --force deletes its managed VMs too
  nodes maintenance <id|hostname> on|off       put a node into maintenance or back
  vms list [--node id|hostname] [--lost]       the VM inventory (managed and found)
  vms list --managed                           the VMs the vDC manages: wanted, observed
  vms create <name> [--vcpus N] [--memory 1G] [--disk 10G|image:ID]... [--cdrom ID]
                    [--nic management]... [--firmware bios|uefi] [--boot disk,cdrom]
                    [--node id|hostname] [--stopped] [--wait]
  vms show <name|uuid> [--events N]            spec, wanted vs observed, history
  vms start|stop|force-off|reboot <name|uuid> [--wait] [--wait-timeout 5m]
  vms delete <name|uuid> [--keep-disks] [--yes]
  vms console <name|uuid>                      the last serial console output
  images upload <file> [--name N] [--format raw|qcow2|iso]  (progress on stderr)
  images list | images delete <id|name>
  pools list [--node id|hostname] [--lost]     the storage pool inventory
  releases upload <dir>                        a signed release bundle folder; the vDC
                                               verifies it against its trusted keys
  releases list | releases show|delete <id|image-version>
  upgrades start --release R (--node N... | --all) [--stage-only] [--wait]
                 [--wait-timeout 1h]           a rolling upgrade, one node at a time;
                                               --wait: exit 1 if it fails, 5 on timeout
  upgrades list | upgrades show|cancel <id>
  controller show                              this vDC's own release, A/B slots, last
                                               rollback and upgrade events
  controller upgrade <id|qvdc-version> [--activate]
                                               have this vDC's qx-init stage a newer
                                               qvdc release; --activate reboots into it
  tokens create [--ttl 24h] [--uses 1] [--description D] [--node-url URL]
                                               a join token, with the kernel command
                                               line and agent.toml lines for nodes
  ca show                                      the agent CA: pins, expiry, rotation
  ca rotate                                    create the next agent CA; agents that are
                                               online learn it during the overlap
  admin-token rotate [--print]                 a new admin token for every vDC on the
                                               database, written to the token file in
                                               use (--print, or a token from the
                                               environment: shown on stdout); the old
                                               one stops working within seconds and
                                               every web UI session ends
  version                                      qx-ctl's version
  help                                         this text

Global flags (also accepted after the command):
  --url URL          the vDC (env QX_VDC_URL, default http://127.0.0.1:8080)
  --token-file FILE  file holding the admin token (env QX_ADMIN_TOKEN_FILE,
                     default /quantix/vdc/admin-token); the admin token itself
                     comes from env QX_ADMIN_TOKEN, never from the command line,
                     where ps and shell history would show it; --token-file wins
                     over QX_ADMIN_TOKEN, which wins over QX_ADMIN_TOKEN_FILE
  -o table|json      output: aligned table (default) or the API's JSON objects
  --timeout D        give up after D (default 30s)
  --ca-cert FILE     trust this PEM certificate for an https:// vDC (its own
                     self-signed certificate)
  --insecure         do not verify the https certificate at all (prints a warning)

Phases: ready, not_ready, disconnected, maintenance.

Exit status:
  0  success
  1  the vDC answered an error, or another failure (including an ambiguous node name)
  2  usage error: bad flag, unknown command, missing or extra argument
  3  not found: the vDC answered 404, or no node has that id or hostname
  4  authentication: no admin token, or the vDC answered 401
  5  the vDC is unreachable or unavailable: refused, timeout, 502/503/504`

// usageError is wrong use of the command line (exit 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// errNoToken: no admin token could be found (exit 4).
var errNoToken = errors.New("no admin token")

// options are the global flags.
type options struct {
	url       string
	tokenFile string
	tokenSet  bool // --token-file given on the command line
	output    string
	timeout   time.Duration
	caCert    string
	insecure  bool
}

// tokenFileFlag records that --token-file was given.
type tokenFileFlag struct{ o *options }

func (f tokenFileFlag) String() string {
	if f.o == nil {
		return ""
	}
	return f.o.tokenFile
}

func (f tokenFileFlag) Set(s string) error {
	if s == "" {
		return errors.New("empty file name")
	}
	f.o.tokenFile, f.o.tokenSet = s, true
	return nil
}

// addGlobal defines the global flags on fs with the current values as defaults, so
// a command's flag set keeps what was parsed before the command name.
func (o *options) addGlobal(fs *flag.FlagSet) {
	fs.StringVar(&o.url, "url", o.url, "vDC `URL`")
	fs.Var(tokenFileFlag{o}, "token-file", "`file` holding the admin token")
	fs.StringVar(&o.output, "o", o.output, "output `format`: table or json")
	fs.StringVar(&o.output, "output", o.output, "output `format`: table or json")
	fs.DurationVar(&o.timeout, "timeout", o.timeout, "give up after `duration`")
	fs.StringVar(&o.caCert, "ca-cert", o.caCert, "trust this PEM `file` for https")
	fs.BoolVar(&o.insecure, "insecure", o.insecure, "do not verify the https certificate")
}

// cli is one invocation.
type cli struct {
	opts   options
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	now    func() time.Time

	client      *client.Client
	tokenSource string // where the admin token came from, for error hints (never the token)
	tokenPath   string // the file the admin token was read from; "" from the environment
}

// run runs qx-ctl with args (without the program name) and returns the exit status.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c := &cli{stdin: stdin, stdout: stdout, stderr: stderr, now: time.Now}
	c.opts = options{
		url:       os.Getenv(envURL),
		tokenFile: os.Getenv(envTokenFile),
		output:    "table",
		timeout:   defaultTimeout,
	}
	if c.opts.url == "" {
		c.opts.url = defaultURL
	}
	err := c.run(ctx, args)
	if err == nil {
		return exitOK
	}
	if errors.Is(err, flag.ErrHelp) { // -h or --help after a command
		fmt.Fprintln(stdout, usage)
		return exitOK
	}
	code := exitCode(err)
	fmt.Fprintf(stderr, "qx-ctl: %v%s\n", err, c.hint(err, code))
	if code == exitUsage {
		fmt.Fprintln(stderr, "run 'qx-ctl help' for usage")
	}
	return code
}

// exitCode maps an error to the documented exit status.
func exitCode(err error) int {
	var ue *usageError
	switch {
	case errors.As(err, &ue):
		return exitUsage
	case errors.Is(err, errNoToken), errors.Is(err, client.ErrUnauthorized):
		return exitAuth
	case errors.Is(err, client.ErrNotFound):
		return exitNotFound
	case errors.Is(err, client.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return exitUnreachable
	}
	return exitFailure
}

// hint adds what to do about the common failures.
func (c *cli) hint(err error, code int) string {
	var answered *client.Error
	switch {
	case errors.As(err, &answered) && answered.Status == http.StatusServiceUnavailable:
		return "" // the vDC itself answered and said why
	case code == exitAuth && errors.Is(err, client.ErrUnauthorized):
		return fmt.Sprintf(" (admin token from %s; the vDC prints it once on its console at first start)", c.tokenSource)
	case code == exitUnreachable && errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf(" (no answer within --timeout %s from %s)", c.opts.timeout, c.opts.url)
	case code == exitUnreachable:
		return fmt.Sprintf(" (is the vDC running at %s? set --url or %s)", c.opts.url, envURL)
	case client.IsTLSError(err) && !c.opts.insecure:
		return " (to trust the vDC's own certificate pass --ca-cert FILE)"
	}
	return ""
}

func (c *cli) run(ctx context.Context, args []string) error {
	fs := c.flagSet("qx-ctl")
	rest, err := parseFlags(fs, args, true)
	if err != nil {
		return err
	}
	if len(rest) == 0 {
		fmt.Fprintln(c.stderr, usage)
		return usagef("no command given")
	}
	cmd, rest := rest[0], rest[1:]
	switch cmd {
	case "help", "-h", "--help":
		fmt.Fprintln(c.stdout, usage)
		return nil
	case "version":
		return c.version(rest)
	case "nodes", "node":
		return c.nodes(ctx, rest)
	case "vms", "vm":
		if len(rest) > 0 && rest[0] != "list" && rest[0] != "ls" {
			return c.vms(ctx, rest)
		}
		if slices.Contains(rest, "--managed") {
			return c.vmsManaged(ctx, slices.DeleteFunc(slices.Clone(rest[1:]), func(s string) bool { return s == "--managed" }))
		}
		return c.listCommand(ctx, "vms", rest, c.vmsList)
	case "images", "image":
		return c.images(ctx, rest)
	case "pools", "pool", "storage-pools":
		return c.listCommand(ctx, "pools", rest, c.poolsList)
	case "releases", "release":
		return c.releases(ctx, rest)
	case "upgrades", "upgrade":
		return c.upgrades(ctx, rest)
	case "controller":
		return c.controller(ctx, rest)
	case "tokens", "token", "join-tokens":
		if len(rest) == 0 || rest[0] != "create" {
			return usagef("tokens: want 'tokens create'")
		}
		return c.tokensCreate(ctx, rest[1:])
	case "ca", "agent-ca":
		if len(rest) == 0 || (rest[0] != "show" && rest[0] != "rotate") {
			return usagef("ca: want 'ca show' or 'ca rotate'")
		}
		return c.agentCA(ctx, rest[0], rest[1:])
	case "admin-token":
		if len(rest) == 0 || rest[0] != "rotate" {
			return usagef("admin-token: want 'admin-token rotate'")
		}
		return c.rotateAdminToken(ctx, rest[1:])
	}
	return usagef("unknown command %q", cmd)
}

// flagSet returns a flag set with the global flags that reports errors to run.
func (c *cli) flagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.opts.addGlobal(fs)
	return fs
}

// parseFlags parses fs from args, letting flags and arguments mix ("nodes show web1
// -o json") unless stopAtCommand, where the first argument ends the flags. "--" ends
// the flags. It returns the arguments.
func parseFlags(fs *flag.FlagSet, args []string, stopAtCommand bool) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usagef("%s: %v", fs.Name(), err)
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 || stopAtCommand {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// connect checks the global flags and builds the API client.
func (c *cli) connect() error {
	if err := c.checkOutput(); err != nil {
		return err
	}
	if c.opts.timeout <= 0 {
		return usagef("--timeout %s: want a positive duration", c.opts.timeout)
	}
	base, err := client.ParseURL(c.opts.url)
	if err != nil {
		return usagef("--url: %v", err)
	}
	https := strings.HasPrefix(base, "https://")
	if (c.opts.caCert != "" || c.opts.insecure) && !https {
		return usagef("--ca-cert and --insecure need an https:// URL, not %s", base)
	}
	if c.opts.caCert != "" && c.opts.insecure {
		return usagef("--ca-cert and --insecure contradict each other: pick one")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if https {
		cfg, err := client.TLSConfig(c.opts.caCert, c.opts.insecure)
		if err != nil {
			return usagef("--ca-cert: %v", err)
		}
		tr.TLSClientConfig = cfg
		if c.opts.insecure {
			fmt.Fprintf(c.stderr, "qx-ctl: warning: --insecure: the certificate of %s is not verified; anyone on the path can read the admin token\n", base)
		}
	} else {
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12} // redirects to https stay verified
	}
	token, err := c.adminToken()
	if err != nil {
		return err
	}
	c.client, err = client.New(client.Config{URL: base, Token: token,
		HTTPClient: &http.Client{Transport: tr}, UserAgent: "qx-ctl/" + quantix.Version})
	if err != nil {
		return usagef("--url: %v", err)
	}
	return nil
}

func (c *cli) checkOutput() error {
	switch c.opts.output {
	case "table", "json":
		return nil
	}
	return usagef("-o %q: want table or json", c.opts.output)
}

// adminToken finds the admin token: --token-file, else QX_ADMIN_TOKEN, else
// QX_ADMIN_TOKEN_FILE, else the default file. Messages name the source, never the
// token.
func (c *cli) adminToken() (string, error) {
	file := c.opts.tokenFile
	switch {
	case c.opts.tokenSet:
		c.tokenSource = "--token-file " + file
	case os.Getenv(envToken) != "":
		c.tokenSource = envToken
		tok := strings.TrimSpace(os.Getenv(envToken))
		if tok == "" || strings.ContainsAny(tok, " \t\r\n") {
			return "", fmt.Errorf("%w: %s holds white space; want the token alone", errNoToken, envToken)
		}
		return tok, nil
	case file != "":
		c.tokenSource = envTokenFile + "=" + file
	default:
		file = defaultTokenFile
		c.tokenSource = file
		if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("%w: set %s or pass --token-file FILE (%s does not exist); the vDC prints the admin token once on its console at first start", errNoToken, envToken, file)
		}
	}
	c.tokenPath = file
	return readTokenFile(file, c.stderr)
}

// readTokenFile reads a file holding one token (surrounding white space ignored)
// and warns when others may read it.
func readTokenFile(path string, stderr io.Writer) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%w: %v", errNoToken, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("%w: %v", errNoToken, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%w: token file %s is not a regular file", errNoToken, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, 4097))
	if err != nil {
		return "", fmt.Errorf("%w: read token file %s: %v", errNoToken, path, err)
	}
	tok := strings.TrimSpace(string(b))
	switch {
	case tok == "":
		return "", fmt.Errorf("%w: token file %s is empty", errNoToken, path)
	case len(b) > 4096 || strings.ContainsAny(tok, " \t\r\n"):
		return "", fmt.Errorf("%w: token file %s must hold the token alone on one line", errNoToken, path)
	}
	if st.Mode().Perm()&0o077 != 0 {
		fmt.Fprintf(stderr, "qx-ctl: warning: token file %s is readable by others (mode %04o); run chmod 600 %s\n", path, st.Mode().Perm(), path)
	}
	return tok, nil
}

func (c *cli) version(args []string) error {
	fs := c.flagSet("version")
	rest, err := parseFlags(fs, args, false)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("version: unexpected argument %q", rest[0])
	}
	if err := c.checkOutput(); err != nil {
		return err
	}
	if c.opts.output == "json" {
		return writeJSON(c.stdout, map[string]string{"version": quantix.Version})
	}
	fmt.Fprintf(c.stdout, "qx-ctl %s\n", quantix.Version)
	return nil
}
