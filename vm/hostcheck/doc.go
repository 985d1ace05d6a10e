// Package hostcheck inspects a host for what qemu-shim needs (KVM,
// vhost-vsock, QEMU, the guest image, cgroup v2) and says how to fix what is
// missing.
package hostcheck
