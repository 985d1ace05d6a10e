// Package cri tests the shim the way Kubernetes drives it: containerd's CRI
// plugin with a runtime handler "qemu", through crictl and the CRI
// validation suite (critest) built from ../shared's snapshots, beside the
// "runc" handler on the same daemon.
package cri
