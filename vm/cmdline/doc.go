// Package cmdline builds the two command lines of a VM: QEMU's argument list
// (machine, acceleration, CPUs and memory with hot-plug headroom, kernel,
// devices, console, QMP) and the guest kernel's command line.
package cmdline
