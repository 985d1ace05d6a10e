// Package wire is the part of the host↔guest contract that is not a
// protobuf service: how a Create names its root filesystem's disks and
// carries the bundle's spec, and which disks stand in for the spec's
// block devices.
package wire

import "google.golang.org/protobuf/types/known/anypb"

// SerialPrefix marks a rootfs mount's source as a disk serial: the guest
// finds the disk the host attached with that serial.
const SerialPrefix = "serial:"

// SpecTypeURL marks CreateTaskRequest.Options that carry the bundle's
// config.json (the guest cannot read the host's bundle).
const SpecTypeURL = "qemu-shim.dev/opencontainers/runtime-spec/config.json"

// MaxSpecSize bounds a config.json sent to the guest.
const MaxSpecSize = 1 << 20

// SpecAny wraps a config.json for CreateTaskRequest.Options.
func SpecAny(configJSON []byte) *anypb.Any {
	return &anypb.Any{TypeUrl: SpecTypeURL, Value: configJSON}
}
