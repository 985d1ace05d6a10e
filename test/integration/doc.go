// Package integration boots the real guest under QEMU and checks the vm
// driver, the transport and the agent together.
package integration
