package task

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/qemu-shim/qemu-shim/api/wire"
	"github.com/qemu-shim/qemu-shim/shim/sandbox"
)

// blockDevice is a block device of the spec's linux.devices that the VM
// gets as a disk.
type blockDevice struct {
	// Path is the device's path in the container (the spec entry's).
	Path string
	// Host is the device's node on the host.
	Host string
	// ReadOnly: the spec's cgroup rules grant the container no write to
	// it, or the host device itself is read-only.
	ReadOnly bool
}

// hostResolver finds a host block device by its numbers: its node (path,
// the spec entry's, is tried first) and whether it is read-only.
type hostResolver func(major, minor int64, path string) (node string, readOnly bool, err error)

// planDevices decides what becomes of the spec's linux.devices in a VM,
// and refuses what cannot be done:
//
//   - block devices are attached as disks (planDevices returns them); the
//     guest gives each the disk's numbers;
//   - character devices every guest has under the same numbers
//     (wire.GuestLocalDevice) and FIFOs are made by the guest's runc as
//     they are;
//   - any other character device (a host's /dev/kvm, a GPU, /dev/net/tun)
//     is refused, by name: its host driver is not in the VM.
//
// A privileged spec (a cgroup rule allowing every device, as containerd's
// WithPrivileged/CRI's privileged add with all the host's devices) gets the
// guest's own devices instead of the host's, as containerd's
// privileged_without_host_devices does: its host devices are left out.
func planDevices(ctx context.Context, id string, spec *specs.Spec, resolve hostResolver) ([]blockDevice, error) {
	if spec.Linux == nil || len(spec.Linux.Devices) == 0 {
		return nil, nil
	}
	var rules []specs.LinuxDeviceCgroup
	if spec.Linux.Resources != nil {
		rules = spec.Linux.Resources.Devices
	}
	if allowsAll(rules) {
		var kept []specs.LinuxDevice
		dropped := 0
		for _, d := range spec.Linux.Devices {
			if d.Type == "p" || wire.GuestLocalDevice(d.Type, d.Major, d.Minor) {
				kept = append(kept, d)
			} else {
				dropped++
			}
		}
		if dropped > 0 {
			log.G(ctx).WithField("container", id).WithField("devices", dropped).Info("privileged container: the host's devices are left out, it gets the guest's")
		}
		spec.Linux.Devices = kept
		return nil, nil
	}
	var out []blockDevice
	seen := map[string]bool{}
	for _, d := range spec.Linux.Devices {
		name := fmt.Sprintf("device %s (%s %d:%d)", d.Path, d.Type, d.Major, d.Minor)
		if !wire.ValidDevicePath(d.Path) {
			return nil, fmt.Errorf("container %s: %s: the path must be absolute, clean and below /dev: %w", id, name, errdefs.ErrInvalidArgument)
		}
		if seen[d.Path] {
			return nil, fmt.Errorf("container %s: %s is listed twice: %w", id, name, errdefs.ErrInvalidArgument)
		}
		seen[d.Path] = true
		switch d.Type {
		case "p":
			continue
		case "c", "u":
			if wire.GuestLocalDevice(d.Type, d.Major, d.Minor) {
				continue
			}
			// (Not ErrNotImplemented: containerd takes that from Create
			// for an older shim API, retries and loses the message.)
			return nil, fmt.Errorf("container %s: %s: a host character device cannot be passed into the VM (only block devices and the guest's own null, zero, full, random, urandom, tty, console, ptmx and fuse can): %w", id, name, errdefs.ErrInvalidArgument)
		case "b":
		default:
			return nil, fmt.Errorf("container %s: %s: unknown device type: %w", id, name, errdefs.ErrInvalidArgument)
		}
		if len(out) == wire.MaxBlockDevices {
			return nil, fmt.Errorf("container %s: more than %d block devices: %w", id, wire.MaxBlockDevices, errdefs.ErrInvalidArgument)
		}
		node, hostRO, err := resolve(d.Major, d.Minor, d.Path)
		if err != nil {
			return nil, fmt.Errorf("container %s: %s: %w", id, name, err)
		}
		access := wire.DeviceAccess(rules, "b", d.Major, d.Minor)
		out = append(out, blockDevice{Path: d.Path, Host: node, ReadOnly: hostRO || !strings.Contains(access, "w")})
	}
	return out, nil
}

// allowsAll says whether the rules end up allowing every device, as a
// privileged container's do.
func allowsAll(rules []specs.LinuxDeviceCgroup) bool {
	all := false
	for _, r := range rules {
		if (r.Type == "" || r.Type == "a") && wire.AnyNumber(r.Major) && wire.AnyNumber(r.Minor) {
			all = r.Allow && wire.RuleAccess(r) == "rwm"
		}
	}
	return all
}

// sysDevBlock is where the host's block devices are listed by number.
var sysDevBlock = "/sys/dev/block"

// hostBlockDevice finds the host's node of block device major:minor: path
// (the spec entry's, which is the host path for ctr --device and
// oci.WithLinuxDevice but the container path for nerdctl's
// --device HOST:CONTAINER and CRI) if it is that device, else /dev/ and
// the name the kernel gives it.
func hostBlockDevice(major, minor int64, path string) (string, bool, error) {
	if major < 0 || minor < 0 || major > 0xfff || minor > 0xfffff {
		return "", false, fmt.Errorf("device numbers out of range: %w", errdefs.ErrInvalidArgument)
	}
	want := unix.Mkdev(uint32(major), uint32(minor))
	is := func(p string) bool {
		var st unix.Stat_t
		return unix.Stat(p, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == want
	}
	sys := filepath.Join(sysDevBlock, strconv.FormatInt(major, 10)+":"+strconv.FormatInt(minor, 10))
	node := ""
	if is(path) {
		node = path
	} else if uevent, err := os.ReadFile(filepath.Join(sys, "uevent")); err == nil {
		for _, line := range strings.Split(string(uevent), "\n") {
			if name, ok := strings.CutPrefix(line, "DEVNAME="); ok && is(filepath.Join("/dev", name)) {
				node = filepath.Join("/dev", name)
			}
		}
	}
	if node == "" {
		return "", false, fmt.Errorf("no block device %d:%d on the host: %w", major, minor, errdefs.ErrNotFound)
	}
	ro, _ := os.ReadFile(filepath.Join(sys, "ro"))
	return node, strings.TrimSpace(string(ro)) == "1", nil
}

// attachDevices attaches the planned block devices to the VM and names
// their disks in the spec for the guest (wire.BlockDevicesAnnotation).
// What it attached before an error is the container's still: Release
// detaches it.
func attachDevices(ctx context.Context, sb sandbox.Sandbox, id string, spec *specs.Spec, devs []blockDevice) error {
	if len(devs) == 0 {
		return nil
	}
	var named []wire.BlockDevice
	for _, d := range devs {
		serial, err := sb.AttachBlockDevice(ctx, id, d.Host, d.ReadOnly)
		if err != nil {
			return err
		}
		log.G(ctx).WithField("container", id).WithField("device", d.Path).WithField("host", d.Host).WithField("serial", serial).WithField("readonly", d.ReadOnly).Debug("block device attached")
		named = append(named, wire.BlockDevice{Path: d.Path, Serial: serial})
	}
	v, err := wire.EncodeBlockDevices(named)
	if err != nil {
		return err
	}
	if spec.Annotations == nil {
		spec.Annotations = map[string]string{}
	}
	spec.Annotations[wire.BlockDevicesAnnotation] = v
	return nil
}
