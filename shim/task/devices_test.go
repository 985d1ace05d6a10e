package task

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/qemu-shim/qemu-shim/api/wire"
)

func i64p(n int64) *int64 { return &n }

// fakeHost has loop devices 7:0 (/dev/loop0) and 7:1 (/dev/loop1, set
// read-only on the host).
func fakeHost(major, minor int64, path string) (string, bool, error) {
	if major == 7 && (minor == 0 || minor == 1) {
		return fmt.Sprintf("/dev/loop%d", minor), minor == 1, nil
	}
	return "", false, fmt.Errorf("no block device %d:%d on the host: %w", major, minor, errdefs.ErrNotFound)
}

// devSpec is a spec with devices and, for each block device, the rule
// containerd's oci.WithDevices adds with the given access.
func devSpec(access string, devs ...specs.LinuxDevice) *specs.Spec {
	s := &specs.Spec{Linux: &specs.Linux{Devices: devs, Resources: &specs.LinuxResources{
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
	}}}
	for _, d := range devs {
		s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{
			Allow: true, Type: d.Type, Major: i64p(d.Major), Minor: i64p(d.Minor), Access: access,
		})
	}
	return s
}

var (
	loop0 = specs.LinuxDevice{Path: "/dev/loop0", Type: "b", Major: 7, Minor: 0}
	loop1 = specs.LinuxDevice{Path: "/dev/xvdc", Type: "b", Major: 7, Minor: 1} // a container path
	null  = specs.LinuxDevice{Path: "/dev/null", Type: "c", Major: 1, Minor: 3}
	kvm   = specs.LinuxDevice{Path: "/dev/kvm", Type: "c", Major: 10, Minor: 232}
)

// TestPlanDevices: block devices become disks of their host nodes,
// read-only where the rules grant no write or the host device is
// read-only; the guest's own character devices and FIFOs pass.
func TestPlanDevices(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name  string
		spec  *specs.Spec
		want  []blockDevice
		ndevs int
	}{
		{"rwm", devSpec("rwm", loop0, null), []blockDevice{{Path: "/dev/loop0", Host: "/dev/loop0"}}, 2},
		{"r only", devSpec("r", loop0), []blockDevice{{Path: "/dev/loop0", Host: "/dev/loop0", ReadOnly: true}}, 1},
		{"host read-only", devSpec("rwm", loop1), []blockDevice{{Path: "/dev/xvdc", Host: "/dev/loop1", ReadOnly: true}}, 1},
		{"no rule", &specs.Spec{Linux: &specs.Linux{Devices: []specs.LinuxDevice{loop0}}}, []blockDevice{{Path: "/dev/loop0", Host: "/dev/loop0", ReadOnly: true}}, 1},
		{"fifo", devSpec("rwm", specs.LinuxDevice{Path: "/dev/myfifo", Type: "p"}), nil, 1},
		{"none", &specs.Spec{}, nil, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := planDevices(ctx, "c1", c.spec, fakeHost)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Errorf("plan %+v, want %+v", got, c.want)
			}
			if c.spec.Linux != nil && len(c.spec.Linux.Devices) != c.ndevs {
				t.Errorf("devices %+v", c.spec.Linux.Devices)
			}
		})
	}
}

// TestPlanDevicesPrivileged: a privileged spec (every device allowed,
// the host's all listed) keeps only the guest's own devices and attaches
// nothing.
func TestPlanDevicesPrivileged(t *testing.T) {
	s := devSpec("rwm", loop0, null, kvm)
	s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Access: "rwm"})
	got, err := planDevices(context.Background(), "c1", s, fakeHost)
	if err != nil || got != nil {
		t.Fatalf("plan %v, %v", got, err)
	}
	if len(s.Linux.Devices) != 1 || s.Linux.Devices[0].Path != "/dev/null" {
		t.Errorf("devices %+v", s.Linux.Devices)
	}
}

// TestPlanDevicesRefused: a host character device is refused by name, as
// are bad paths, a missing host device and too many devices.
func TestPlanDevicesRefused(t *testing.T) {
	many := devSpec("rwm")
	for i := 0; i <= wire.MaxBlockDevices; i++ {
		many.Linux.Devices = append(many.Linux.Devices, specs.LinuxDevice{Path: fmt.Sprintf("/dev/d%d", i), Type: "b", Major: 7, Minor: 0})
	}
	for _, c := range []struct {
		name    string
		spec    *specs.Spec
		want    error
		message string
	}{
		{"kvm", devSpec("rwm", loop0, kvm), errdefs.ErrInvalidArgument, "device /dev/kvm (c 10:232): a host character device cannot be passed into the VM"},
		{"tun", devSpec("rwm", specs.LinuxDevice{Path: "/dev/net/tun", Type: "c", Major: 10, Minor: 200}), errdefs.ErrInvalidArgument, "/dev/net/tun"},
		{"relative", devSpec("rwm", specs.LinuxDevice{Path: "dev/loop0", Type: "b", Major: 7}), errdefs.ErrInvalidArgument, "dev/loop0"},
		{"outside /dev", devSpec("rwm", specs.LinuxDevice{Path: "/tmp/loop0", Type: "b", Major: 7}), errdefs.ErrInvalidArgument, "/tmp/loop0"},
		{"unclean", devSpec("rwm", specs.LinuxDevice{Path: "/dev/./loop0", Type: "b", Major: 7}), errdefs.ErrInvalidArgument, "/dev/./loop0"},
		{"twice", devSpec("rwm", loop0, loop0), errdefs.ErrInvalidArgument, "twice"},
		{"missing", devSpec("rwm", specs.LinuxDevice{Path: "/dev/sdz", Type: "b", Major: 65, Minor: 160}), errdefs.ErrNotFound, "/dev/sdz"},
		{"unknown type", devSpec("rwm", specs.LinuxDevice{Path: "/dev/x", Type: "z"}), errdefs.ErrInvalidArgument, "/dev/x"},
		{"too many", many, errdefs.ErrInvalidArgument, "more than"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := planDevices(context.Background(), "c1", c.spec, fakeHost)
			if !errors.Is(err, c.want) || !strings.Contains(fmt.Sprint(err), c.message) {
				t.Errorf("got %v, want %v naming %q", err, c.want, c.message)
			}
		})
	}
}

// TestDeviceAccess reads the rules as the device cgroup does.
func TestDeviceAccess(t *testing.T) {
	rules := []specs.LinuxDeviceCgroup{
		{Allow: false, Access: "rwm"},
		{Allow: true, Type: "b", Major: i64p(-1), Minor: i64p(-1), Access: "m"},
		{Allow: true, Type: "a", Major: i64p(7), Access: "rw"},
		{Allow: false, Type: "b", Major: i64p(7), Minor: i64p(1), Access: "w"},
		{Allow: true, Type: "c", Major: i64p(7), Minor: i64p(2), Access: "rwm"},
	}
	for _, c := range []struct {
		minor int64
		want  string
	}{{0, "rwm"}, {1, "rm"}, {2, "rwm"}} {
		if got := wire.DeviceAccess(rules, "b", 7, c.minor); got != c.want {
			t.Errorf("7:%d: %q, want %q", c.minor, got, c.want)
		}
	}
	if got := wire.DeviceAccess(rules, "b", 8, 0); got != "m" {
		t.Errorf("8:0: %q", got)
	}
}

// TestHostBlockDeviceMissing: numbers naming no host device are refused.
func TestHostBlockDeviceMissing(t *testing.T) {
	old := sysDevBlock
	sysDevBlock = t.TempDir()
	defer func() { sysDevBlock = old }()
	if _, _, err := hostBlockDevice(7, 99, "/nonexistent"); !errdefs.IsNotFound(err) {
		t.Errorf("got %v", err)
	}
	if _, _, err := hostBlockDevice(-1, 0, "/dev/null"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("negative major: %v", err)
	}
	// /dev/null is a character device: never taken for a block device.
	if _, _, err := hostBlockDevice(1, 3, "/dev/null"); !errdefs.IsNotFound(err) {
		t.Errorf("/dev/null as a block device: %v", err)
	}
}
