package wire

import (
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"strings"
)

// BlockDevicesAnnotation carries, in the spec the host sends, which disk
// stands in for each block device of linux.devices: a JSON list of
// BlockDevice. The host attaches each host block device the spec names to
// the VM as a disk with that serial; the guest replaces the entry's (host)
// major and minor numbers, and those of the cgroup rules naming them, by
// the disk's, and drops the annotation.
const BlockDevicesAnnotation = "qemu-shim.dev/block-devices"

// MaxBlockDevices bounds the block devices of one container.
const MaxBlockDevices = 32

// BlockDevice is one entry of BlockDevicesAnnotation: the container path
// of a linux.devices entry and the serial of its disk.
type BlockDevice struct {
	Path   string `json:"path"`
	Serial string `json:"serial"`
}

var validSerial = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,19}$`)

// ValidSerial says whether s may be a disk serial: QEMU keeps only the
// first 20 characters.
func ValidSerial(s string) bool { return validSerial.MatchString(s) }

// ValidDevicePath says whether p may name a device node in a container:
// absolute, clean, below /dev (not /dev itself).
func ValidDevicePath(p string) bool {
	return len(p) <= 256 && path.IsAbs(p) && path.Clean(p) == p && strings.HasPrefix(p, "/dev/") && !strings.ContainsRune(p, 0)
}

// EncodeBlockDevices makes the annotation's value.
func EncodeBlockDevices(devs []BlockDevice) (string, error) {
	if err := checkBlockDevices(devs); err != nil {
		return "", err
	}
	b, err := json.Marshal(devs)
	return string(b), err
}

// DecodeBlockDevices reads and validates the annotation's value.
func DecodeBlockDevices(v string) ([]BlockDevice, error) {
	if len(v) > 64<<10 {
		return nil, fmt.Errorf("annotation %s of %d bytes is too long", BlockDevicesAnnotation, len(v))
	}
	var devs []BlockDevice
	if err := json.Unmarshal([]byte(v), &devs); err != nil {
		return nil, fmt.Errorf("annotation %s: %v", BlockDevicesAnnotation, err)
	}
	return devs, checkBlockDevices(devs)
}

func checkBlockDevices(devs []BlockDevice) error {
	if len(devs) > MaxBlockDevices {
		return fmt.Errorf("%d block devices: at most %d", len(devs), MaxBlockDevices)
	}
	paths, serials := map[string]bool{}, map[string]bool{}
	for _, d := range devs {
		if !ValidDevicePath(d.Path) {
			return fmt.Errorf("block device path %q: want an absolute, clean path below /dev", d.Path)
		}
		if !ValidSerial(d.Serial) {
			return fmt.Errorf("block device %s: serial %q: want 1-20 letters, digits, '_' or '-'", d.Path, d.Serial)
		}
		if paths[d.Path] || serials[d.Serial] {
			return fmt.Errorf("block device %s (serial %s) named twice", d.Path, d.Serial)
		}
		paths[d.Path], serials[d.Serial] = true, true
	}
	return nil
}

// GuestLocalDevice says whether a character device is one every guest has
// under the same numbers, so that a spec naming it needs nothing from the
// host: runc's default devices (null, zero, full, random, urandom, tty),
// the console and ptmx its default cgroup rules allow, and fuse (the
// guest's kernel has it for virtio-fs). Their numbers are fixed by Linux.
// Any other character device is the host's and cannot reach a VM.
func GuestLocalDevice(typ string, major, minor int64) bool {
	if typ != "c" && typ != "u" {
		return false
	}
	switch [2]int64{major, minor} {
	case [2]int64{1, 3}, [2]int64{1, 5}, [2]int64{1, 7}, [2]int64{1, 8}, [2]int64{1, 9}, // null zero full random urandom
		[2]int64{5, 0}, [2]int64{5, 1}, [2]int64{5, 2}, // tty console ptmx
		[2]int64{10, 229}: // fuse
		return true
	}
	return false
}
