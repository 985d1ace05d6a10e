// Package test holds the integration and end-to-end tests: they boot the
// real guest under a real QEMU (TCG where there is no usable KVM) and, for
// the shim, drive a real containerd.
package test
