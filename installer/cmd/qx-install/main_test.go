package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix/quantix/installer"
	"github.com/quantix/quantix/tests/vm"
)

// fakeHost makes a sysfs tree with one 3 GiB disk "vda" whose node is an image file.
func fakeHost(t *testing.T) (sys, dev string) {
	root := t.TempDir()
	sys, dev = filepath.Join(root, "sys"), filepath.Join(root, "dev")
	for p, v := range map[string]string{"vda/size": "6291456", "vda/removable": "0", "vda/ro": "0", "vda/serial": "SN1"} {
		os.MkdirAll(filepath.Dir(filepath.Join(sys, p)), 0o755)
		os.WriteFile(filepath.Join(sys, p), []byte(v+"\n"), 0o644)
	}
	os.MkdirAll(dev, 0o755)
	f, err := os.Create(filepath.Join(dev, "vda"))
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(3 << 30)
	f.Close()
	return sys, dev
}

func TestRunUnattended(t *testing.T) {
	if testing.Short() {
		t.Skip("installs onto a disk image: skipped with -short")
	}
	k := vm.TestKernel(t)
	med := t.TempDir()
	if err := installer.BuildBootFiles(filepath.Join(med, installer.MediumBootDir)); err != nil {
		t.Fatal(err)
	}
	kb, _ := os.ReadFile(k.Vmlinuz)
	os.WriteFile(filepath.Join(med, installer.MediumKernel), kb, 0o644)
	os.WriteFile(filepath.Join(med, installer.MediumInitrd), []byte("initramfs"), 0o644)
	sys, dev := fakeHost(t)
	ans := filepath.Join(t.TempDir(), "install.toml")
	os.WriteFile(ans, []byte("hostname = \"n1\"\n[target]\nserial = \"SN1\"\n[agent]\ncontrol_plane = \"http://10.0.0.2:8080\"\njoin_token = \"join-token-0123456789\"\ninsecure_plain_http = true\n"), 0o644)
	common := []string{"--image", "quantix-os", "--volume-label", "QUANTIX-OS", "--sys-block", sys, "--dev", dev, "--mounts", "/dev/null"}

	var out, errb bytes.Buffer
	if err := run(context.Background(), append([]string{"disks"}, common...), &out, &errb); err != nil || !strings.Contains(out.String(), `serial "SN1": empty`) {
		t.Fatalf("qx-install disks = %v:\n%s", err, out.String())
	}
	out.Reset()
	if err := run(context.Background(), append([]string{"--answer", ans, "--medium", med}, common...), &out, &errb); err != nil {
		t.Fatalf("qx-install --answer: %v\n%s\n%s", err, out.String(), errb.String())
	}
	if !strings.Contains(out.String(), "QUANTIX: install-complete") {
		t.Errorf("no install-complete marker:\n%s", out.String())
	}
	// The disk is A/B already: convert-slots reads the medium and says so.
	err := run(context.Background(), []string{"convert-slots", "--medium", med, "--image", "quantix-os", "--version", "0.1.0", filepath.Join(dev, "vda")}, &out, &errb)
	if !errors.Is(err, installer.ErrAlreadySlotted) {
		t.Errorf("convert-slots on an A/B install = %v, want ErrAlreadySlotted", err)
	}
	// Again: the disk now holds the install and the answer has no wipe = true.
	err = run(context.Background(), append([]string{"--answer", ans, "--medium", med}, common...), &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "set wipe = true") || !strings.Contains(err.Error(), "no disk was written") {
		t.Errorf("second install without wipe = %v, want a refusal leaving the disk untouched", err)
	}
}

func TestRunUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--bogus"}, "flag provided but not defined"},
		{[]string{"--answer", "x.toml", "extra"}, "unexpected arguments"},
		{[]string{"--answer", "x.toml", "--image", "quantix-os", "--volume-label", "Q"}, "--medium is required"},
		{[]string{"build-boot-files"}, "usage: qx-install build-boot-files DIR"},
		{[]string{"convert-slots", "--medium", "m", "--image", "qvdc", "/dev/vda"}, "usage: qx-install convert-slots"},
		{[]string{"convert-slots", "--medium", "/nonexistent", "--image", "qvdc", "--version", "1.0.0", "/dev/vda"}, "boot medium"},
	} {
		var out, errb bytes.Buffer
		err := run(context.Background(), c.args, &out, &errb)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("run(%q) = %v, want %q", c.args, err, c.want)
		}
	}
}
