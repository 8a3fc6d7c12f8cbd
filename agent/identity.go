package agent

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/google/uuid"

	"github.com/quantix/quantix"
)

// DefaultProductUUIDPath is where Linux shows the SMBIOS system UUID.
const DefaultProductUUIDPath = "/sys/class/dmi/id/product_uuid"

// Machine ID sources recorded in identity.toml.
const (
	MachineIDSMBIOS = "smbios"
	MachineIDRandom = "random"
)

// Identity is /quantix/node/identity.toml: what proves to the vDC that this host is
// the node registered under its hostname. It is created once and reused forever;
// losing it means the vDC refuses the host (409) until the node is deleted there.
type Identity struct {
	// MachineID is the SMBIOS product UUID when it is sane, else a random UUID.
	MachineID string `toml:"machine_id"`
	// MachineIDSource says where MachineID came from: "smbios" or "random".
	MachineIDSource string `toml:"machine_id_source"`
	// NodeSecret is the hex of 32 random bytes.
	NodeSecret string `toml:"node_secret"`
	// CAPins are the vDC agent CA pins this node trusts (docs/design.md §15): the
	// join token's at first, then what the vDC announces (both during a rotation).
	CAPins []string `toml:"ca_pins,omitempty"`
}

// ErrCorruptIdentity is wrapped when identity.toml exists but cannot be used.
var ErrCorruptIdentity = errors.New("identity file is corrupt")

// placeholderUUIDs are product UUIDs that firmware ships on many machines at once
// and that therefore identify nothing.
var placeholderUUIDs = map[string]bool{
	"03000200-0400-0500-0006-000700080009": true, // common AMI/Supermicro default
	"00020003-0004-0005-0006-000700080009": true, // the same, byte-swapped
	"12345678-1234-5678-90ab-cddeefaabbcc": true, // VMware and OEM examples
	"01234567-8910-1112-1314-151617181920": true,
	"4c4c4544-0000-2010-8020-80c04f202020": true, // Dell service tag left blank
	"00000000-0000-0000-0000-000000000001": true,
}

// MachineIDFromSMBIOS returns the product UUID in lower case when raw is a sane
// UUID, and "" when it is empty, malformed or a known placeholder (all zeros, all
// Fs, one digit repeated, firmware defaults).
func MachineIDFromSMBIOS(raw string) string {
	s := strings.ToLower(strings.TrimSpace(raw))
	u, err := uuid.Parse(s)
	if err != nil || len(s) != 36 {
		return ""
	}
	s = u.String()
	if placeholderUUIDs[s] {
		return ""
	}
	digits := strings.ReplaceAll(s, "-", "")
	if strings.Count(digits, digits[:1]) == len(digits) {
		return "" // 00000000-..., ffffffff-..., 11111111-...
	}
	return s
}

// LoadOrCreateIdentity returns the identity stored at path, or creates it there
// (mode 0600, atomically) when the file does not exist. productUUIDPath is read
// only on creation. A file that exists but is unreadable or invalid is an error
// wrapping ErrCorruptIdentity: it is never replaced silently, because a new
// identity for a known hostname is refused by the vDC.
func LoadOrCreateIdentity(path, productUUIDPath string) (Identity, bool, error) {
	id, err := LoadIdentity(path)
	if err == nil {
		return id, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return Identity{}, false, err
	}
	id = Identity{MachineIDSource: MachineIDRandom}
	if productUUIDPath != "" {
		if b, err := os.ReadFile(productUUIDPath); err == nil {
			if m := MachineIDFromSMBIOS(string(b)); m != "" {
				id.MachineID, id.MachineIDSource = m, MachineIDSMBIOS
			}
		}
	}
	if id.MachineID == "" {
		u, err := uuid.NewRandom()
		if err != nil {
			return Identity{}, false, fmt.Errorf("create machine id: %w", err)
		}
		id.MachineID = u.String()
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return Identity{}, false, fmt.Errorf("create node secret: %w", err)
	}
	id.NodeSecret = hex.EncodeToString(secret)
	if err := SaveIdentity(path, id); err != nil {
		return Identity{}, false, err
	}
	return id, true, nil
}

// SaveIdentity writes id to path atomically (mode 0600): a crash leaves the old
// identity or the new one, never a torn file.
func SaveIdentity(path string, id Identity) error {
	if err := id.Validate(); err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	var b bytes.Buffer
	b.WriteString("# Quantix node identity. Created once by qx-node; keep private (0600).\n")
	b.WriteString("# Deleting or changing it makes the vDC refuse this host until its node is deleted there.\n")
	if err := toml.NewEncoder(&b).Encode(id); err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return quantix.WriteFileAtomic(path, b.Bytes(), 0o600)
}

// LoadIdentity reads and checks identity.toml. A missing file is fs.ErrNotExist.
func LoadIdentity(path string) (Identity, error) {
	var id Identity
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Identity{}, err
		}
		return Identity{}, fmt.Errorf("%w: %w", ErrCorruptIdentity, err)
	}
	if err := quantix.DecodeTOMLFile(path, &id); err != nil {
		return Identity{}, fmt.Errorf("%w: %w", ErrCorruptIdentity, err)
	}
	if err := id.Validate(); err != nil {
		return Identity{}, fmt.Errorf("%w: %s: %w", ErrCorruptIdentity, path, err)
	}
	return id, nil
}

// Validate checks the fields of an identity.
func (id Identity) Validate() error {
	if _, err := uuid.Parse(id.MachineID); err != nil || len(id.MachineID) != 36 {
		return fmt.Errorf("machine_id %q is not a UUID", id.MachineID)
	}
	if id.MachineIDSource != MachineIDSMBIOS && id.MachineIDSource != MachineIDRandom {
		return fmt.Errorf("machine_id_source %q is neither %q nor %q", id.MachineIDSource, MachineIDSMBIOS, MachineIDRandom)
	}
	if b, err := hex.DecodeString(id.NodeSecret); err != nil || len(b) != 32 {
		return fmt.Errorf("node_secret is not 64 hex digits (32 bytes)")
	}
	for i, p := range id.CAPins {
		if !quantix.ValidPin(p) {
			return fmt.Errorf("ca_pins[%d] %q is not a CA pin (43 base64url characters)", i, p)
		}
	}
	return nil
}
