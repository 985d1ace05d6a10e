// Package shim is the containerd-facing side of qemu-shim: the shim v2
// manager that containerd starts (manager), the task service that forwards
// to the guest agent (task), the host side of stdio (stdio), turning
// snapshots into disks (rootfs) and the configuration (config).
package shim
