// Package boot does what PID 1 must do first in our initramfs: make the root
// a real mount (so that runc's pivot_root works) and mount the pseudo
// filesystems the rest of the guest needs.
package boot
