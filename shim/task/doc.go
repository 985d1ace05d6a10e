// Package task is the shim's TTRPC task service (containerd's
// runtime/task/v3), in front of a sandbox (package sandbox): the first
// Create boots the VM, every Create hands the sandbox the container's root
// filesystem, network and bind mounts and the guest its spec, stdio is
// joined to the guest's streams, calls go on to the guest's task service
// with a deadline, Update resizes the VM, and the guest's events reach
// containerd in order per container, each exit once the process's output
// is drained. When the VM ends, every process is reported killed and the
// calls answer as the runc shim's do for stopped processes.
//
// The service's lock guards its maps only; boot, hot-plug and calls to the
// guest run outside it, so one container's slow create or drain never
// holds up another's calls or events.
package task
