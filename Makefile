# Quantix build and test entry points. On a fresh Debian 12 machine:
#   make iso    builds out/quantix-os.iso and out/qvdc.iso (installing what it needs)
#   make test   runs every test, the QEMU end-to-end tests included
SHELL := /bin/bash
GO ?= go
OUT ?= out
# Debian packages the build and the tests need. The build: kernel modules tooling,
# bootloaders, filesystems. The tests: PostgreSQL, QEMU with firmware, libvirt,
# iproute2 for network namespaces.
APT_PACKAGES := \
	postgresql-15 postgresql-client-15 \
	qemu-system-x86 qemu-utils ovmf \
	isolinux syslinux-common grub-efi-amd64-bin grub-pc-bin grub-common grub-emu \
	mtools dosfstools e2fsprogs kmod cpio xorriso squashfs-tools \
	iproute2 iptables dnsmasq-base \
	patroni etcd-server etcd-client \
	libvirt-daemon libvirt-daemon-system libvirt-clients \
	chromium fonts-liberation \
	ca-certificates

export GOFLAGS := -buildvcs=false
TEST_TIMEOUT ?= 75m

.PHONY: all deps iso test unit vet lint clean demo

all: iso

# deps installs every Debian package the build and tests need (only the missing ones,
# so a second run is quick) and downloads the Go modules.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "deps: installing $$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	$(GO) mod download

# iso builds both appliance ISOs into $(OUT)/ with SHA256SUMS and a manifest per
# image. Timestamps come from SOURCE_DATE_EPOCH, else the last commit's time. It also
# builds qx-ctl, the vDC's CLI for operators' workstations, as a static binary.
iso: deps
	$(GO) run ./images/cmd/qx-image build --out $(OUT) $(if $(TRUSTED_KEYS),--trusted-keys $(TRUSTED_KEYS)) images/quantix-os.toml images/qvdc.toml
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-X github.com/quantix/quantix.Version=$$(git describe --always --dirty 2>/dev/null || echo dev)" -o $(OUT)/qx-ctl ./vdc/cmd/qx-ctl

vet:
	$(GO) vet ./...

# test runs every test. Tests that need root (network namespaces) or QEMU are part of
# it; see README.md for what each needs.
test: deps vet iso
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

# demo boots QvDC and one Quantix-OS node in QEMU on this machine and prints the web
# UI's URL on 127.0.0.1 and the admin token; Ctrl-C powers both off.
demo: deps iso
	QUANTIX_DEMO=1 $(GO) test -v -count=1 -timeout 0 -run '^TestDemo$$' ./tests/e2e/

# unit runs the quick tests only (no PostgreSQL, namespaces or QEMU).
unit:
	$(GO) test -short -count=1 ./...

lint: vet
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.6.1 ./...

clean:
	rm -rf $(OUT)
