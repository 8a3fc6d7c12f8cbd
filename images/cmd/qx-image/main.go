// Command qx-image builds Quantix images and config disks.
//
//	qx-image build [--out DIR] [--cache DIR] [--rebuild] images/quantix-os.toml [images/qvdc.toml ...]
//	qx-image config-disk --out cfg.img [--label QUANTIX-CFG|QUANTIX-INSTALL] [--size 16M] dest=src ...
//	qx-image inspect out/quantix-os.iso
//	qx-image keygen NAME
//	qx-image sign --key NAME.key BUNDLE-DIR
//
// build writes out/<name>.iso, out/<name>.manifest.json and out/SHA256SUMS; with the
// same inputs and SOURCE_DATE_EPOCH the ISO is byte-identical. config-disk writes an
// ext4 image whose files are given as dest=src pairs (dest without a leading '/',
// e.g. hostname=./hostname network/network.toml=./net.toml). keygen writes a release
// signing key pair NAME.key (0600) and NAME.pub, whose line goes into an image
// definition's trusted_keys; sign turns a folder holding one <image>.iso and its
// <image>.manifest.json into a release bundle (SHA256SUMS, SHA256SUMS.sig).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/images/build"
	"github.com/quantix/quantix/upgrade"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "qx-image:", err)
		os.Exit(1)
	}
}

const usage = `usage:
  qx-image build [--out DIR] [--cache DIR] [--rebuild] [-v] IMAGE.toml...
  qx-image config-disk --out FILE [--label QUANTIX-CFG|QUANTIX-INSTALL] [--size 16M] DEST=SRC...
  qx-image inspect ISO
  qx-image keygen NAME
  qx-image sign --key NAME.key BUNDLE-DIR`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	switch args[0] {
	case "build":
		return runBuild(ctx, args[1:], stdout, stderr)
	case "config-disk":
		return runConfigDisk(args[1:], stdout, stderr)
	case "inspect":
		return runInspect(args[1:], stdout)
	case "keygen":
		return runKeygen(args[1:], stdout)
	case "sign":
		return runSign(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return nil
	default:
		return fmt.Errorf("unknown command %q\n%s", args[0], usage)
	}
}

func runBuild(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "output folder (default <repo>/out)")
	cache := fs.String("cache", "", "cache folder (default $XDG_CACHE_HOME/quantix or ~/.cache/quantix)")
	rebuild := fs.Bool("rebuild", false, "ignore the cached u-root build")
	verbose := fs.Bool("v", false, "log details")
	keysFile := fs.String("trusted-keys", "", "file of release public keys (qx-image keygen's .pub lines) the images trust besides their trusted_keys")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("build: name at least one image file, e.g. images/quantix-os.toml")
	}
	var keys []quantix.PublicKey
	if *keysFile != "" {
		b, err := os.ReadFile(*keysFile)
		if err != nil {
			return fmt.Errorf("build: --trusted-keys: %w", err)
		}
		if keys, err = quantix.ParsePublicKeys(b); err != nil {
			return fmt.Errorf("build: --trusted-keys %s: %w", *keysFile, err)
		}
		if len(keys) == 0 {
			return fmt.Errorf("build: --trusted-keys %s holds no key", *keysFile)
		}
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	for _, specFile := range fs.Args() {
		b, err := build.New(build.Config{Spec: specFile, OutDir: *out, CacheDir: *cache, Rebuild: *rebuild, Progress: stdout, TrustedKeys: keys}, log)
		if err != nil {
			return err
		}
		if _, err := b.Build(ctx); err != nil {
			return fmt.Errorf("build %s: %w", specFile, err)
		}
	}
	return nil
}

func runConfigDisk(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("config-disk", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "disk image to write (required)")
	label := fs.String("label", quantix.LabelConfig, "filesystem label: QUANTIX-CFG or QUANTIX-INSTALL")
	sizeStr := fs.String("size", "16M", "image size (K, M, G suffixes)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("config-disk: --out is required")
	}
	size, err := parseSize(*sizeStr)
	if err != nil {
		return fmt.Errorf("config-disk: --size: %w", err)
	}
	files := map[string][]byte{}
	for _, a := range fs.Args() {
		dest, src, ok := strings.Cut(a, "=")
		if !ok || dest == "" || src == "" {
			return fmt.Errorf("config-disk: %q must be DEST=SRC, e.g. network/network.toml=./network.toml", a)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("config-disk: %s: %w", dest, err)
		}
		files[dest] = data
	}
	if err := build.ConfigDisk(*out, *label, size, files); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %s, %d files\n", *out, *label, len(files))
	return nil
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size like 16M", s)
	}
	return n * mult, nil
}

func runInspect(args []string, stdout io.Writer) error {
	if len(args) != 1 {
		return errors.New("inspect: name one ISO")
	}
	l, err := build.ReadLayout(args[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "size %d bytes\nMBR: signature %v, isolinux.bin at sector %d\n", l.Size, l.MBRSignature, l.MBRBootLBA)
	for i, p := range l.MBRParts {
		if p.Type != 0 {
			fmt.Fprintf(stdout, "  mbr%d: type %#02x status %#02x start %d size %d\n", i+1, p.Type, p.Status, p.Start, p.Size)
		}
	}
	fmt.Fprintf(stdout, "GPT: primary at %d, backup at %d, usable %d-%d\n", l.GPT.MyLBA, l.GPT.AltLBA, l.GPT.FirstUsable, l.GPT.LastUsable)
	for i, p := range l.GPTParts {
		fmt.Fprintf(stdout, "  gpt%d: %q esp=%v sectors %d-%d\n", i+1, p.Name, build.IsESP(p.Type), p.First, p.Last)
	}
	fmt.Fprintf(stdout, "El Torito: BIOS image at block %d, EFI image at block %d (%d sectors)\n", l.ElTorito.BIOSLBA, l.ElTorito.EFILBA, l.ElTorito.EFISecs)
	return nil
}

func runKeygen(args []string, stdout io.Writer) error {
	if len(args) != 1 || strings.HasPrefix(args[0], "-") {
		return errors.New("keygen: name the key, e.g. qx-image keygen release-2026 (writes release-2026.key and release-2026.pub)")
	}
	k, err := upgrade.Keygen(args[0], nil)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s.key (keep it secret) and %s.pub; for trusted_keys in images/*.toml:\n%s\n", args[0], args[0], k)
	return nil
}

func runSign(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sign", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keyFile := fs.String("key", "", "private key from qx-image keygen (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *keyFile == "" || fs.NArg() != 1 {
		return errors.New("sign: want --key NAME.key and one bundle folder holding <image>.iso and <image>.manifest.json")
	}
	key, err := upgrade.LoadPrivateKey(*keyFile)
	if err != nil {
		return err
	}
	if err := upgrade.Sign(fs.Arg(0), key); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "signed %s: %s, %s\n", fs.Arg(0), quantix.BundleSums, quantix.BundleSignature)
	return nil
}
