package quantix

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"

	"github.com/BurntSushi/toml"
)

// VDCSecretsFile is /quantix/vdc/secrets.toml (mode 0600). Two parts write it:
// the postgres bootstrap (database_password, on first boot) and the vDC
// (admin_token_hash, on its first start), so both read-modify-write it through
// LoadVDCSecrets and SaveVDCSecrets and keep each other's fields.
type VDCSecretsFile struct {
	// DatabasePassword is the password of the PostgreSQL role "quantix".
	DatabasePassword string `toml:"database_password,omitempty"`
	// AdminTokenHash is "sha256:<hex>" of the admin bearer token.
	AdminTokenHash string `toml:"admin_token_hash,omitempty"`
}

// LoadVDCSecrets reads path strictly. A missing file is an empty VDCSecretsFile.
func LoadVDCSecrets(path string) (VDCSecretsFile, error) {
	var s VDCSecretsFile
	err := DecodeTOMLFile(path, &s)
	if errors.Is(err, fs.ErrNotExist) {
		return VDCSecretsFile{}, nil
	}
	return s, err
}

// SaveVDCSecrets writes s to path atomically with mode 0600.
func SaveVDCSecrets(path string, s VDCSecretsFile) error {
	var b bytes.Buffer
	b.WriteString("# Quantix vDC secrets. Written by the appliance; keep private (0600).\n")
	if err := toml.NewEncoder(&b).Encode(s); err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return WriteFileAtomic(path, b.Bytes(), 0o600)
}
