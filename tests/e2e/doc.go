// Package e2e holds the Quantix end-to-end scenarios (docs/design.md §11), and only
// them: it boots the real QvDC and Quantix-OS ISOs in QEMU on one virtual L2 segment
// with the lab of tests/vm (its hub with DHCP server, link cut and pcap, the
// workstation, the QUANTIX-CFG config disks `qx-image config-disk` writes), and
// checks the scenarios through the product's own APIs: the vDC's HTTP API through
// vdc/client with the admin token from the QvDC config disk, and the agents'
// status endpoints.
//
// The test process takes part in the segment as an operator's workstation
// (vm.Workstation: a user-space TCP/IP stack on a hub port), so the vDC is reached
// at its real address on the management network.
//
// The lab keeps to two VMs at once (the machine-wide limit of tests/vm): the QvDC
// and one node "machine" whose config disk is swapped or edited between boots,
// as an operator moves USB sticks between servers. Distinct nodes are distinct
// config disks: hostname, network.toml, agent.toml and the identity the agent
// creates there.
package e2e
