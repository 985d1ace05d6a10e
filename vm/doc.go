// Package vm runs one QEMU virtual machine for qemu-shim. From the outside it
// is small: describe CPUs, memory and disks in a Config, Start, then use the
// TTRPC client and streams to the guest agent, hot-plug resources while it
// runs, and Shutdown. Underneath it builds the command line (vm/cmdline),
// drives QMP (vm/qmp) and connects the host↔guest transport.
package vm
