// Package rootfs turns the rootfs mounts containerd hands a shim into disk
// images for the guest: the overlayfs snapshotter's read-only lower
// directories become erofs images (cached, shared between containers), its
// writable layer a sparse ext4 image in the bundle; the erofs snapshotter's
// layer files are passed through as they are.
package rootfs
