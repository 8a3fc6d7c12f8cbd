package agent

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestMachineIDFromSMBIOS(t *testing.T) {
	tests := []struct {
		raw, want string
	}{
		{"4C4C4544-0051-3410-8035-B4C04F4A4B32\n", "4c4c4544-0051-3410-8035-b4c04f4a4b32"},
		{"8b9d3c52-6f0a-4e55-9a4e-2d1b7f6c0e11", "8b9d3c52-6f0a-4e55-9a4e-2d1b7f6c0e11"},
		{"00000000-0000-0000-0000-000000000000", ""},
		{"FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", ""},
		{"11111111-1111-1111-1111-111111111111", ""},
		{"03000200-0400-0500-0006-000700080009", ""},
		{"00020003-0004-0005-0006-000700080009", ""},
		{"01234567-8910-1112-1314-151617181920", ""},
		{"12345678-1234-5678-90AB-CDDEEFAABBCC", ""},
		{"Not Settable", ""},
		{"", ""},
		{"urn:uuid:8b9d3c52-6f0a-4e55-9a4e-2d1b7f6c0e11", ""},
		{"8b9d3c526f0a4e559a4e2d1b7f6c0e11", ""},
	}
	for _, tt := range tests {
		if got := MachineIDFromSMBIOS(tt.raw); got != tt.want {
			t.Errorf("MachineIDFromSMBIOS(%q) = %q, want %q", tt.raw, got, tt.want)
		}
	}
}

func TestIdentityCreatedOnceAndReused(t *testing.T) {
	tests := []struct {
		name        string
		productUUID string // "" = no file
		wantID      string // "" = random
		wantSource  string
	}{
		{"smbios", "8B9D3C52-6F0A-4E55-9A4E-2D1B7F6C0E11\n", "8b9d3c52-6f0a-4e55-9a4e-2d1b7f6c0e11", MachineIDSMBIOS},
		{"placeholder", "03000200-0400-0500-0006-000700080009\n", "", MachineIDRandom},
		{"zeros", "00000000-0000-0000-0000-000000000000\n", "", MachineIDRandom},
		{"no dmi", "", "", MachineIDRandom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			uuidPath := filepath.Join(dir, "product_uuid")
			if tt.productUUID != "" {
				if err := os.WriteFile(uuidPath, []byte(tt.productUUID), 0o400); err != nil {
					t.Fatal(err)
				}
			}
			path := filepath.Join(dir, "node", "identity.toml")
			id, created, err := LoadOrCreateIdentity(path, uuidPath)
			if err != nil || !created {
				t.Fatalf("LoadOrCreateIdentity() = %+v, %v, %v, want created", id, created, err)
			}
			if tt.wantID != "" && id.MachineID != tt.wantID {
				t.Errorf("machine_id = %q, want %q", id.MachineID, tt.wantID)
			}
			if id.MachineIDSource != tt.wantSource {
				t.Errorf("machine_id_source = %q, want %q", id.MachineIDSource, tt.wantSource)
			}
			if err := id.Validate(); err != nil {
				t.Errorf("created identity invalid: %v", err)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("identity.toml mode %v, want 0600", fi.Mode().Perm())
			}
			// The SMBIOS UUID changing later (board swap, firmware update) changes
			// nothing: the identity is created once.
			if err := os.WriteFile(uuidPath, []byte("5d6e7f80-1111-2222-3333-444455556666"), 0o400); err != nil {
				t.Fatal(err)
			}
			again, created, err := LoadOrCreateIdentity(path, uuidPath)
			if err != nil || created {
				t.Fatalf("second LoadOrCreateIdentity() = %v, created %v, want reuse", err, created)
			}
			if !reflect.DeepEqual(again, id) {
				t.Errorf("reloaded identity %+v, want %+v", again, id)
			}
		})
	}
}

func TestIdentityCorruptIsAnError(t *testing.T) {
	const good = "machine_id = \"8b9d3c52-6f0a-4e55-9a4e-2d1b7f6c0e11\"\nmachine_id_source = \"smbios\"\nnode_secret = \"" +
		"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"\n"
	tests := []struct {
		name, content, wantErr string
	}{
		{"truncated", good[:40], "identity.toml"},
		{"empty", "", "machine_id"},
		{"short secret", strings.Replace(good, "ff\"", "\"", 1), "node_secret"},
		{"bad machine id", strings.Replace(good, "8b9d3c52-", "zz", 1), "machine_id"},
		{"unknown key", good + "hostname = \"n1\"\n", "hostname"},
		{"bad source", strings.Replace(good, "\"smbios\"", "\"bios\"", 1), "machine_id_source"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "identity.toml")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, _, err := LoadOrCreateIdentity(path, "")
			if !errors.Is(err, ErrCorruptIdentity) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("LoadOrCreateIdentity() error = %v, want ErrCorruptIdentity naming %q", err, tt.wantErr)
			}
			// Nothing stored is lost: the file is left as it was.
			b, _ := os.ReadFile(path)
			if string(b) != tt.content {
				t.Errorf("identity file changed to %q", b)
			}
		})
	}
	// And the good one loads.
	path := filepath.Join(t.TempDir(), "identity.toml")
	os.WriteFile(path, []byte(good), 0o600)
	if _, created, err := LoadOrCreateIdentity(path, ""); err != nil || created {
		t.Errorf("good identity: created %v, err %v", created, err)
	}
}
