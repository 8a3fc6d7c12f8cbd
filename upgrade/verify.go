package upgrade

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/quantix/quantix"
)

// What Verify refuses; each error wraps one of them and says what to do.
var (
	ErrUnsigned     = errors.New("bundle is not signed")
	ErrBadSignature = errors.New("bundle signature is not from a key this image trusts")
	ErrDamaged      = errors.New("bundle does not match its SHA256SUMS")
	ErrWrongImage   = errors.New("bundle is for another image")
	ErrVersion      = errors.New("bundle version is not allowed")
)

// Rules say what the running system accepts.
type Rules struct {
	// Image is the running image (quantix.ImageQuantixOS or quantix.ImageQvDC).
	Image string
	// Running is the running version; an older bundle is refused unless Force.
	Running string
	Force   bool
}

// Bundle is a verified release bundle.
type Bundle struct {
	Dir, ISO       string // ISO is the path of the release ISO
	Image, Version string
	ISOSHA256      string
	SignedBy       string // the trusted key's name
	Took           time.Duration
}

// manifest is the part of images/build.Manifest (<image>.manifest.json) a bundle
// is judged by.
type manifest struct {
	Image   string `json:"image"`
	Version string `json:"version"`
}

// Verify checks a bundle folder before anything is written: the signature of
// SHA256SUMS by one of trusted, the sha256 of the ISO and its manifest, the image
// and the version against r.
func Verify(dir string, trusted []quantix.PublicKey, r Rules) (*Bundle, error) {
	t0 := time.Now()
	fail := func(err error) (*Bundle, error) { return nil, fmt.Errorf("verify bundle %s: %w", dir, err) }
	sums, err := os.ReadFile(filepath.Join(dir, quantix.BundleSums))
	if err != nil {
		return fail(fmt.Errorf("%w: %v (a bundle is <image>.iso, <image>.manifest.json, %s and %s from qx-image sign)", ErrUnsigned, err, quantix.BundleSums, quantix.BundleSignature))
	}
	sigText, err := os.ReadFile(filepath.Join(dir, quantix.BundleSignature))
	if err != nil {
		return fail(fmt.Errorf("%w: %v (sign it with qx-image sign)", ErrUnsigned, err))
	}
	s := strings.TrimSpace(string(sigText))
	sig, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, sigPrefix))
	if !strings.HasPrefix(s, sigPrefix) || err != nil || len(sig) != ed25519.SignatureSize {
		return fail(fmt.Errorf("%w: %s is not an ed25519 signature written by qx-image sign", ErrUnsigned, quantix.BundleSignature))
	}
	if len(trusted) == 0 {
		return fail(fmt.Errorf("%w: this image trusts no release keys (trusted_keys in its image definition)", ErrBadSignature))
	}
	b := &Bundle{Dir: dir}
	for _, k := range trusted {
		if ed25519.Verify(k.Key, sums, sig) {
			b.SignedBy = k.Name
			break
		}
	}
	if b.SignedBy == "" {
		names := make([]string, len(trusted))
		for i, k := range trusted {
			names[i] = k.Name
		}
		return fail(fmt.Errorf("%w (trusted: %s): get a bundle signed by one of them", ErrBadSignature, strings.Join(names, ", ")))
	}

	listed, iso, man, err := parseSums(sums)
	if err != nil {
		return fail(err)
	}
	for name, want := range listed {
		got, err := quantix.FileSHA256(filepath.Join(dir, name))
		if err != nil {
			return fail(fmt.Errorf("%w: %v", ErrDamaged, err))
		}
		if got != want {
			return fail(fmt.Errorf("%w: %s has sha256 %s, %s says %s: copy the bundle again", ErrDamaged, name, got, quantix.BundleSums, want))
		}
	}
	b.ISO, b.ISOSHA256 = filepath.Join(dir, iso), listed[iso]

	m, err := readManifest(dir, man)
	if err != nil {
		return fail(err)
	}
	b.Image, b.Version = m.Image, m.Version
	if m.Image != r.Image {
		return fail(fmt.Errorf("%w: it holds %s %s, this is %s: use a %s bundle", ErrWrongImage, m.Image, m.Version, r.Image, r.Image))
	}
	if !r.Force {
		c, err := CompareVersions(m.Version, r.Running)
		if err != nil {
			return fail(fmt.Errorf("%w: %v (force to stage it anyway)", ErrVersion, err))
		}
		if c < 0 {
			return fail(fmt.Errorf("%w: %s is older than the running %s (force to go back)", ErrVersion, m.Version, r.Running))
		}
	}
	b.Took = time.Since(t0)
	return b, nil
}

// parseSums reads a bundle's SHA256SUMS: the files it lists with their sha256,
// which must be one <image>.iso and its <image>.manifest.json.
func parseSums(sums []byte) (listed map[string]string, iso, man string, err error) {
	listed = map[string]string{}
	for _, l := range strings.Split(strings.TrimRight(string(sums), "\n"), "\n") {
		sum, name, ok := strings.Cut(l, "  ")
		if !ok || len(sum) != 64 || name == "" || strings.ContainsAny(name, "/\\") || name == "." || name == ".." {
			return nil, "", "", fmt.Errorf("%w: line %q is not \"<sha256>  <file>\"", ErrDamaged, l)
		}
		listed[name] = sum
		switch {
		case strings.HasSuffix(name, ".iso"):
			iso = name
		case strings.HasSuffix(name, ".manifest.json"):
			man = name
		}
	}
	if len(listed) != 2 || iso == "" || man != strings.TrimSuffix(iso, ".iso")+".manifest.json" {
		return nil, "", "", fmt.Errorf("%w: %s must list one <image>.iso and its <image>.manifest.json", ErrDamaged, quantix.BundleSums)
	}
	return listed, iso, man, nil
}

func readManifest(dir, name string) (manifest, error) {
	var m manifest
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil || m.Image == "" || m.Version == "" {
		return m, fmt.Errorf("%w: %s names no image and version (%v)", ErrDamaged, name, err)
	}
	return m, nil
}

// Unverified is what a bundle folder says about itself before anything is
// checked: enough to list the bundles found on a USB stick or CD. Nothing here
// is trusted; Verify (init, when staging) decides.
type Unverified struct {
	Dir            string
	ISO            string // the ISO's file name
	Image, Version string // from its manifest, as the bundle claims
}

// Inspect reads what the bundle in dir claims to be: it needs SHA256SUMS, its
// signature, the ISO and the manifest SHA256SUMS lists, and reads no more than
// SHA256SUMS and the manifest (no hashing: the medium may be slow).
func Inspect(dir string) (Unverified, error) {
	u := Unverified{Dir: dir}
	sums, err := os.ReadFile(filepath.Join(dir, quantix.BundleSums))
	if err != nil {
		return u, fmt.Errorf("bundle %s: %w", dir, err)
	}
	if _, err := os.Stat(filepath.Join(dir, quantix.BundleSignature)); err != nil {
		return u, fmt.Errorf("bundle %s: %w: %w", dir, ErrUnsigned, err)
	}
	_, iso, man, err := parseSums(sums)
	if err != nil {
		return u, fmt.Errorf("bundle %s: %w", dir, err)
	}
	if st, err := os.Stat(filepath.Join(dir, iso)); err != nil || !st.Mode().IsRegular() {
		return u, fmt.Errorf("bundle %s: %w: %s lists %s, which is not there", dir, ErrDamaged, quantix.BundleSums, iso)
	}
	m, err := readManifest(dir, man)
	if err != nil {
		return u, fmt.Errorf("bundle %s: %w", dir, err)
	}
	u.ISO, u.Image, u.Version = iso, m.Image, m.Version
	return u, nil
}

// CompareVersions compares release versions MAJOR.MINOR.PATCH[-PRE]: -1, 0 or 1.
// A pre-release sorts before its release; pre-releases compare as strings.
func CompareVersions(a, b string) (int, error) {
	pa, prea, err := parseVersion(a)
	if err != nil {
		return 0, err
	}
	pb, preb, err := parseVersion(b)
	if err != nil {
		return 0, err
	}
	for i := range pa {
		if pa[i] != pb[i] {
			if pa[i] < pb[i] {
				return -1, nil
			}
			return 1, nil
		}
	}
	switch {
	case prea == preb:
		return 0, nil
	case prea == "":
		return 1, nil
	case preb == "":
		return -1, nil
	case prea < preb:
		return -1, nil
	}
	return 1, nil
}

func parseVersion(v string) ([3]int, string, error) {
	var p [3]int
	core, pre, _ := strings.Cut(v, "-")
	f := strings.Split(core, ".")
	if len(f) != 3 {
		return p, "", fmt.Errorf("version %q is not MAJOR.MINOR.PATCH", v)
	}
	for i, s := range f {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return p, "", fmt.Errorf("version %q is not MAJOR.MINOR.PATCH", v)
		}
		p[i] = n
	}
	return p, pre, nil
}
