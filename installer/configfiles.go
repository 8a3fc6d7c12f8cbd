package installer

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent"
	"github.com/quantix/quantix/services/console"
	"github.com/quantix/quantix/services/network"
	"github.com/quantix/quantix/vdc"
)

// File is one file for QUANTIX-CFG.
type File struct {
	Data []byte
	Mode os.FileMode
}

// ConfigFiles are the files of QUANTIX-CFG by path relative to its root
// ("network/network.toml").
type ConfigFiles map[string]File

// Names returns the file paths in order.
func (c ConfigFiles) Names() []string {
	var n []string
	for k := range c {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func rel(p string) string { return strings.TrimPrefix(strings.TrimPrefix(p, quantix.ConfigDir), "/") }

// BuildConfig renders the initial configuration from a validated answer: the
// hostname, network.toml, and per image agent.toml plus a fresh identity.toml
// (Quantix OS) or vdc.toml plus secrets.toml (QvDC), and the console password file
// (console.DefaultPasswordFile, the argon2id hash only). Every file
// is written through its owner's own encoder into a scratch folder and loaded back
// with its owner's strict loader, so what goes on the disk is what the services
// accept. productUUID is the SMBIOS product UUID file for the machine_id.
func BuildConfig(a *Answer, image, productUUID string) (ConfigFiles, error) {
	tmp, err := os.MkdirTemp("", "qx-install-cfg-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	at := func(p string) string { return filepath.Join(tmp, filepath.FromSlash(rel(p))) }
	files := ConfigFiles{}
	add := func(p string, mode os.FileMode) error {
		b, err := os.ReadFile(at(p))
		if err != nil {
			return err
		}
		files[rel(p)] = File{Data: b, Mode: mode}
		return nil
	}

	if err := quantix.WriteFileAtomic(at(quantix.HostnameFile), []byte(a.Hostname+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := add(quantix.HostnameFile, 0o644); err != nil {
		return nil, err
	}
	if a.Network != nil {
		var b bytes.Buffer
		b.WriteString("# Written by qx-install from the answer file's [network].\n")
		if err := toml.NewEncoder(&b).Encode(a.Network); err != nil {
			return nil, fmt.Errorf("encode network.toml: %w", err)
		}
		if err := quantix.WriteFileAtomic(at(quantix.NetworkConfig), b.Bytes(), 0o644); err != nil {
			return nil, err
		}
		if _, err := network.Load(at(quantix.NetworkConfig)); err != nil {
			return nil, fmt.Errorf("network.toml as written does not load: %w", err)
		}
		if err := add(quantix.NetworkConfig, 0o644); err != nil {
			return nil, err
		}
	}
	switch image {
	case quantix.ImageQuantixOS:
		if err := agent.Save(at(quantix.AgentConfig), *a.Agent); err != nil {
			return nil, err
		}
		if _, err := agent.Load(at(quantix.AgentConfig)); err != nil {
			return nil, fmt.Errorf("agent.toml as written does not load: %w", err)
		}
		if _, _, err := agent.LoadOrCreateIdentity(at(quantix.IdentityFile), productUUID); err != nil {
			return nil, fmt.Errorf("create identity: %w", err)
		}
		if err := add(quantix.AgentConfig, 0o600); err != nil {
			return nil, err
		}
		if err := add(quantix.IdentityFile, 0o600); err != nil {
			return nil, err
		}
	case quantix.ImageQvDC:
		v := a.VDC
		if v == nil {
			v = &VDCAnswer{}
		}
		c := struct {
			Listen            string   `toml:"listen,omitempty"`
			HeartbeatInterval string   `toml:"heartbeat_interval,omitempty"`
			JoinTokens        []string `toml:"join_tokens,omitempty"`
		}{v.Listen, v.HeartbeatInterval, v.JoinTokens}
		var b bytes.Buffer
		b.WriteString("# Written by qx-install. Flags of qx-vdc serve override it.\n")
		if err := toml.NewEncoder(&b).Encode(c); err != nil {
			return nil, fmt.Errorf("encode vdc.toml: %w", err)
		}
		if err := quantix.WriteFileAtomic(at(quantix.VDCConfig), b.Bytes(), 0o600); err != nil {
			return nil, err
		}
		vc := vdc.DefaultConfig()
		if err := vdc.LoadConfigFile(at(quantix.VDCConfig), &vc, false); err != nil {
			return nil, fmt.Errorf("vdc.toml as written does not load: %w", err)
		}
		if err := vc.Validate(); err != nil {
			return nil, fmt.Errorf("vdc.toml as written is invalid: %w", err)
		}
		if err := add(quantix.VDCConfig, 0o600); err != nil {
			return nil, err
		}
		if v.AdminToken != "" {
			h := sha256.Sum256([]byte(v.AdminToken))
			if err := quantix.SaveVDCSecrets(at(quantix.VDCSecrets), quantix.VDCSecretsFile{AdminTokenHash: "sha256:" + hex.EncodeToString(h[:])}); err != nil {
				return nil, err
			}
			if _, err := quantix.LoadVDCSecrets(at(quantix.VDCSecrets)); err != nil {
				return nil, fmt.Errorf("secrets.toml as written does not load: %w", err)
			}
			if err := add(quantix.VDCSecrets, 0o600); err != nil {
				return nil, err
			}
		}
	}
	if a.ConsolePassword != "" || a.ConsolePasswordHash != "" {
		// The console's own store writes the file (one PHC string and a newline,
		// mode 0600) and reads it back; a given hash is written the same way.
		ps := console.PasswordStore{Path: at(console.DefaultPasswordFile)}
		if a.ConsolePassword != "" {
			if err := ps.Set(a.ConsolePassword); err != nil {
				return nil, fmt.Errorf("console password: %w", err)
			}
			if err := ps.Verify(a.ConsolePassword); err != nil {
				return nil, fmt.Errorf("console password file as written does not verify: %w", err)
			}
		} else {
			if err := quantix.WriteFileAtomic(ps.Path, []byte(strings.TrimSpace(a.ConsolePasswordHash)+"\n"), 0o600); err != nil {
				return nil, err
			}
			h, err := ps.Get()
			if err != nil {
				return nil, fmt.Errorf("console password file as written does not load: %w", err)
			}
			if err := console.ValidHash(h); err != nil {
				return nil, fmt.Errorf("console password file as written: %w", err)
			}
		}
		if err := add(console.DefaultPasswordFile, 0o600); err != nil {
			return nil, err
		}
	}
	if len(a.TrustedKeys) > 0 {
		text := "# Written by qx-install from the answer file's trusted_keys: release keys of this site.\n" + strings.Join(a.TrustedKeys, "\n") + "\n"
		if err := os.MkdirAll(filepath.Dir(at(quantix.SiteTrustedKeys)), 0o755); err != nil {
			return nil, err
		}
		if err := quantix.WriteFileAtomic(at(quantix.SiteTrustedKeys), []byte(text), 0o644); err != nil {
			return nil, err
		}
		if ks, err := quantix.ParsePublicKeys([]byte(text)); err != nil || len(ks) != len(a.TrustedKeys) {
			return nil, fmt.Errorf("trusted keys as written do not load: %d of %d keys, %v", len(ks), len(a.TrustedKeys), err)
		}
		if err := add(quantix.SiteTrustedKeys, 0o644); err != nil {
			return nil, err
		}
	}
	for name := range files {
		if path.Clean(name) != name || strings.HasPrefix(name, "../") {
			return nil, fmt.Errorf("config file path %q escapes QUANTIX-CFG", name)
		}
	}
	return files, nil
}
