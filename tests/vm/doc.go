// Package vm is the Quantix QEMU test lab (docs/design.md §11): it boots virtual
// machines under QEMU (TCG unless a probe shows that KVM really works), captures
// their serial console line by line, waits for console markers with explicit
// timeouts, fails at once on a kernel panic, a `QUANTIX: fatal` marker or a QEMU
// exit, drives QEMU through QMP, and joins the VMs on a virtual L2 segment: a hub
// inside the test process with a DHCP server, ARP and ping for its gateway address,
// per-port link cut and heal, and a pcap of the segment.
//
// A test boots a machine with Start and talks to it through the returned *Machine:
//
//	hub := vm.NewHub(t, vm.HubConfig{})
//	m := vm.Start(t, vm.Config{
//		Name: "node1",
//		ISO:  vm.ISO(t, quantix.ImageQuantixOS),
//		NICs: []vm.NIC{{Hub: hub}},
//	})
//	m.WaitMarker(t, quantix.MarkerBootComplete, 90*time.Second)
//
// The parts, one job each:
//   - Config is turned into Devices (qemu.go: Base, KernelBoot, CD, Drive, HubNIC,
//     UserNIC, UEFIFirmware, SerialSocket, ...), each adding its own QEMU
//     arguments; the command line is their arguments in order, tested without QEMU.
//     Config.Devices adds devices of a test's own.
//   - Machine (machine.go) is the lifecycle: start, power button, reset, kill,
//     restart, QMP, artifacts.
//   - Console (console.go), which a Machine carries, owns the lines and the waits,
//     with one verb convention: Await* returns an error, Expect* and Wait* fail the
//     test and print the console tail.
//   - The lab pieces scenarios share (lab.go, workstation.go): the product's ISOs
//     (ISO), node config disks (NodeConfigDisk, ConfigDisk), the segment's usual
//     addresses, and the Workstation, a user-space TCP/IP stack on a hub port
//     through which tests reach VMs and VMs reach host services.
//
// Every machine holds one of the machine-wide VM slots (QUANTIX_VM_SLOTS, default 2)
// from Start until its test ends, so `go test ./...` never runs more VMs at once than
// the two cores can carry. The serial log, QEMU's stderr, the reproducing command line
// and the pcap are artifacts: in t.ArtifactDir() with `go test -artifacts`, otherwise
// in a temporary folder that is kept, and printed, when the test fails.
//
// For self-tests and as a boot-time floor the package also builds a bare Debian
// kernel plus a tiny Go initramfs (TestKernel, TestInitramfs); cmd/testinit is its
// /init.
package vm
