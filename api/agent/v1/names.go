package agent

import "strings"

// Names both sides of the agent API agree on.
const (
	// ToolsDiskSerial is the serial of the read-only disk that carries the
	// guest's tools (runc), kept out of the initramfs to boot faster.
	ToolsDiskSerial = "qs-tools"
	// ToolsMountPoint is where the agent mounts that disk.
	ToolsMountPoint = "/run/qemu-shim/tools"
	// ContainerNetnsPath is where the VM's container network namespace
	// is mounted. The task service makes it when it starts (the kernel
	// takes a tenth of a second or more for it under TCG), and a template
	// is saved once it is there, so that restored VMs have it already.
	ContainerNetnsPath = "/run/qemu-shim/netns/containers"
)

// The share of host files (virtio-fs): the tag the guest mounts it by, and
// how a spec's mount names an entry staged in it ("qemu-shim-share:c3/m1").
const (
	ShareTag          = "qemu-shim-share"
	ShareSourcePrefix = "qemu-shim-share:"
)

// ValidShareEntry says whether rel is the path of a staged entry in the
// share ("c3/m1"), or of a path below one ("c3/m1/sub/dir", a submount of
// the entry's source): the guest refuses any other.
func ValidShareEntry(rel string) bool {
	parts := strings.Split(rel, "/")
	if len(parts) < 2 || !numbered(parts[0], "c", 9) || !numbered(parts[1], "m", 4) {
		return false
	}
	for _, p := range parts[2:] {
		if p == "" || p == "." || p == ".." {
			return false
		}
	}
	return true
}

func numbered(s, prefix string, maxDigits int) bool {
	digits, ok := strings.CutPrefix(s, prefix)
	if !ok || digits == "" || len(digits) > maxDigits {
		return false
	}
	for _, r := range digits {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}
