package agent

import "strings"

// Names both sides of the agent API agree on.
const (
	// ToolsDiskSerial is the serial of the read-only disk that carries the
	// guest's tools (runc), kept out of the initramfs to boot faster.
	ToolsDiskSerial = "qs-tools"
	// ToolsMountPoint is where the agent mounts that disk.
	ToolsMountPoint = "/run/qemu-shim/tools"
)

// The share of host files (virtio-fs): the tag the guest mounts it by, and
// how a spec's mount names an entry staged in it ("qemu-shim-share:c3/m1").
const (
	ShareTag          = "qemu-shim-share"
	ShareSourcePrefix = "qemu-shim-share:"
)

// ValidShareEntry says whether rel is the path of a staged entry in the
// share: the guest refuses any other.
func ValidShareEntry(rel string) bool {
	c, m, ok := strings.Cut(rel, "/")
	return ok && numbered(c, "c", 9) && numbered(m, "m", 4)
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
