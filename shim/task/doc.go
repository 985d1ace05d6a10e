// Package task is the shim's TTRPC task service (containerd's
// runtime/task/v3). It boots the container's (or pod's) VM on the first
// Create, turns the rootfs into disks, joins stdio to the guest's streams,
// forwards each call to the guest agent, answers Update with CPU and memory
// hot-plug, and forwards the agent's events to containerd once the
// process's output is drained.
package task
