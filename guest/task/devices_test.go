package task

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/qemu-shim/qemu-shim/api/wire"
)

func i64(n int64) *int64 { return &n }

// blockSpec is a spec as containerd's oci.WithLinuxDevice makes it for a
// host loop device 7:3 on /dev/xvdb, among the default rules.
func blockSpec(t *testing.T, named ...wire.BlockDevice) *specs.Spec {
	t.Helper()
	mode := os.FileMode(0o660)
	uid, gid := uint32(0), uint32(6)
	s := &specs.Spec{Process: &specs.Process{}, Annotations: map[string]string{"other": "kept"}, Linux: &specs.Linux{
		Devices: []specs.LinuxDevice{
			{Path: "/dev/xvdb", Type: "b", Major: 7, Minor: 3, FileMode: &mode, UID: &uid, GID: &gid},
			{Path: "/dev/null", Type: "c", Major: 1, Minor: 3},
		},
		Resources: &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{
			{Allow: false, Access: "rwm"},
			{Allow: true, Type: "c", Major: i64(1), Minor: i64(3), Access: "rwm"},
			{Allow: true, Type: "b", Major: i64(7), Minor: i64(3), Access: "rw"},
		}},
	}}
	if named == nil {
		named = []wire.BlockDevice{{Path: "/dev/xvdb", Serial: "b1"}}
	}
	v, err := wire.EncodeBlockDevices(named)
	if err != nil {
		t.Fatal(err)
	}
	s.Annotations[wire.BlockDevicesAnnotation] = v
	return s
}

// disks is a guest whose disk b1 is 8:16 and b2 8:32.
func disks(serial string) (int64, int64, error) {
	switch serial {
	case "b1":
		return 8, 16, nil
	case "b2":
		return 8, 32, nil
	}
	return 0, 0, fmt.Errorf("no disk with serial %q: %w", serial, errdefs.ErrNotFound)
}

// TestAdaptDevicesBlock: a block device keeps its path, mode and owner
// and gets its disk's numbers, and so does its cgroup rule; the
// annotation is gone and the guest's own devices are untouched.
func TestAdaptDevicesBlock(t *testing.T) {
	s := blockSpec(t)
	if err := adaptDevices(context.Background(), "c1", s, disks); err != nil {
		t.Fatal(err)
	}
	d := s.Linux.Devices[0]
	if d.Path != "/dev/xvdb" || d.Type != "b" || d.Major != 8 || d.Minor != 16 || *d.FileMode != 0o660 || *d.UID != 0 || *d.GID != 6 {
		t.Errorf("block device %+v", d)
	}
	if n := s.Linux.Devices[1]; n.Major != 1 || n.Minor != 3 {
		t.Errorf("/dev/null changed: %+v", n)
	}
	var rules []string
	for _, r := range s.Linux.Resources.Devices {
		rules = append(rules, ruleString(r))
	}
	if got, want := strings.Join(rules, "; "), "deny  *:* rwm; allow c 1:3 rwm; allow b 8:16 rw"; got != want {
		t.Errorf("rules %q, want %q", got, want)
	}
	if _, ok := s.Annotations[wire.BlockDevicesAnnotation]; ok || s.Annotations["other"] != "kept" {
		t.Errorf("annotations %v", s.Annotations)
	}
}

// TestAdaptDeviceRules: rules by number for host block devices the guest
// lacks go (their numbers are the VM's own disks'); a device granted by a
// rule by major only gets exact rules for its guest numbers; deny rules
// and wildcards stay; a device no rule grants stays ungranted.
func TestAdaptDeviceRules(t *testing.T) {
	toGuest := map[devNum]devNum{{7, 3}: {8, 16}, {7, 4}: {8, 32}}
	rules := []specs.LinuxDeviceCgroup{
		{Allow: false, Access: "rwm"},
		{Allow: true, Type: "b", Major: i64(-1), Minor: i64(-1), Access: "m"},
		{Allow: true, Type: "b", Major: i64(7), Access: "r"},                 // by major: grants 7:3 r
		{Allow: true, Type: "b", Major: i64(8), Minor: i64(0), Access: "rw"}, // a host disk: gone
		{Allow: false, Type: "b", Major: i64(7), Minor: i64(4), Access: "r"}, // 7:4 loses r again
	}
	out := adaptDeviceRules(context.Background(), "c1", rules, toGuest)
	for _, n := range []struct {
		guest devNum
		want  string
	}{{devNum{8, 16}, "rm"}, {devNum{8, 32}, "m"}, {devNum{8, 0}, "m"}} {
		if got := grants(out, n.guest); got != n.want {
			t.Errorf("%v granted %q, want %q; rules %v", n.guest, got, n.want, out)
		}
	}
	for _, r := range out {
		if r.Allow && r.Major != nil && *r.Major == 8 && r.Minor != nil && *r.Minor == 0 {
			t.Errorf("rule for a host disk kept: %s", ruleString(r))
		}
	}
}

// TestAdaptDevicesRefused: what the host should never send is refused:
// block devices without a disk, disks for no device, host character
// devices, bad paths and serials, a missing disk.
func TestAdaptDevicesRefused(t *testing.T) {
	for name, c := range map[string]struct {
		mod  func(*specs.Spec)
		want error
	}{
		"no disk": {func(s *specs.Spec) { delete(s.Annotations, wire.BlockDevicesAnnotation) }, errdefs.ErrInvalidArgument},
		"disk for no device": {func(s *specs.Spec) {
			s.Annotations[wire.BlockDevicesAnnotation] = `[{"path":"/dev/xvdb","serial":"b1"},{"path":"/dev/xvdc","serial":"b2"}]`
		}, errdefs.ErrInvalidArgument},
		"disk for a char device": {func(s *specs.Spec) {
			s.Annotations[wire.BlockDevicesAnnotation] = `[{"path":"/dev/xvdb","serial":"b1"},{"path":"/dev/null","serial":"b2"}]`
		}, errdefs.ErrInvalidArgument},
		"host char device": {func(s *specs.Spec) {
			s.Linux.Devices = append(s.Linux.Devices, specs.LinuxDevice{Path: "/dev/kvm", Type: "c", Major: 10, Minor: 232})
		}, errdefs.ErrInvalidArgument},
		"relative path": {func(s *specs.Spec) { s.Linux.Devices[1].Path = "dev/null" }, errdefs.ErrInvalidArgument},
		"outside /dev":  {func(s *specs.Spec) { s.Linux.Devices[1].Path = "/etc/null" }, errdefs.ErrInvalidArgument},
		"unclean path":  {func(s *specs.Spec) { s.Linux.Devices[1].Path = "/dev/../etc/null" }, errdefs.ErrInvalidArgument},
		"listed twice":  {func(s *specs.Spec) { s.Linux.Devices[1].Path = "/dev/xvdb" }, errdefs.ErrInvalidArgument},
		"bad serial": {func(s *specs.Spec) {
			s.Annotations[wire.BlockDevicesAnnotation] = `[{"path":"/dev/xvdb","serial":"b1/../x"}]`
		}, errdefs.ErrInvalidArgument},
		"long serial": {func(s *specs.Spec) {
			s.Annotations[wire.BlockDevicesAnnotation] = `[{"path":"/dev/xvdb","serial":"b123456789012345678901"}]`
		}, errdefs.ErrInvalidArgument},
		"not JSON": {func(s *specs.Spec) { s.Annotations[wire.BlockDevicesAnnotation] = `{` }, errdefs.ErrInvalidArgument},
		"disk not found": {func(s *specs.Spec) {
			s.Annotations[wire.BlockDevicesAnnotation] = `[{"path":"/dev/xvdb","serial":"b9"}]`
		}, errdefs.ErrNotFound},
		"too many": {func(s *specs.Spec) {
			var named []wire.BlockDevice
			for i := 0; i <= wire.MaxBlockDevices; i++ {
				named = append(named, wire.BlockDevice{Path: fmt.Sprintf("/dev/d%d", i), Serial: fmt.Sprintf("b%d", i)})
			}
			b, _ := json.Marshal(named)
			s.Annotations[wire.BlockDevicesAnnotation] = string(b)
		}, errdefs.ErrInvalidArgument},
	} {
		t.Run(name, func(t *testing.T) {
			s := blockSpec(t)
			c.mod(s)
			if err := adaptDevices(context.Background(), "c1", s, disks); !errors.Is(err, c.want) {
				t.Errorf("got %v, want %v", err, c.want)
			}
		})
	}
}
