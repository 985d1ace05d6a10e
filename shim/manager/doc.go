// Package manager answers containerd's calls to the shim binary itself:
// start (re-executing the binary as the long-lived shim daemon, one per
// container or one per pod), delete after a crash (ending a QEMU left
// behind), and info.
package manager
