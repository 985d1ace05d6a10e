// Package task is the agent's containerd task service (runtime/task/v3):
// it runs each container's processes under runc inside the guest with the
// semantics of containerd's runc shim (states, exit statuses, event order,
// IO drained before an exit is reported), assembling the rootfs from
// virtio disks and carrying stdio over the transport's streams. Its events
// go to an EventLog that a reconnecting host can replay.
package task
