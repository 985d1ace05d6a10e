// Package e2e runs containers through a real, private containerd 2.x with
// the qemu-shim runtime: each container in its own VM, under TCG here.
package e2e
