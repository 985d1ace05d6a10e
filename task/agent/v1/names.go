package agent

// Names both sides of the agent API agree on.
const (
	// ToolsDiskSerial is the serial of the read-only disk that carries the
	// guest's tools (runc), kept out of the initramfs to boot faster.
	ToolsDiskSerial = "qs-tools"
	// ToolsMountPoint is where the agent mounts that disk.
	ToolsMountPoint = "/run/qemu-shim/tools"
)
