// Package blockdev finds the guest's virtio disks by the serial the host
// gave them: the only name that does not depend on probe order.
package blockdev
