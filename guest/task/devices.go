package task

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/qemu-shim/qemu-shim/api/wire"
)

// devNum is a device's major and minor numbers.
type devNum struct{ major, minor int64 }

// adaptDevices gives the spec's block devices the numbers of the disks
// the host attached for them (wire.BlockDevicesAnnotation names each
// one's serial; disk finds a disk by serial and returns its numbers), so
// that runc makes each node, with the spec's path, mode and owner, for
// the right disk. The cgroup rules that name a device's host numbers are
// rewritten to its guest numbers; any other rule allowing a block device
// by number is dropped, since in the guest those numbers name a disk of
// the VM (a root filesystem layer). Character devices other than those
// every guest has, and block devices without a disk, are refused: the
// host refuses them first, this is a second look.
func adaptDevices(ctx context.Context, id string, s *specs.Spec, disk func(serial string) (int64, int64, error)) error {
	l := log.G(ctx).WithField("container", id)
	var named []wire.BlockDevice
	if v, ok := s.Annotations[wire.BlockDevicesAnnotation]; ok {
		delete(s.Annotations, wire.BlockDevicesAnnotation)
		var err error
		if named, err = wire.DecodeBlockDevices(v); err != nil {
			return fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
		}
	}
	serials := map[string]string{}
	for _, n := range named {
		serials[n.Path] = n.Serial
	}
	if s.Linux == nil {
		if len(named) > 0 {
			return fmt.Errorf("disks for block devices of a spec without linux devices: %w", errdefs.ErrInvalidArgument)
		}
		return nil
	}
	if len(s.Linux.Devices) > 4*wire.MaxBlockDevices {
		return fmt.Errorf("%d devices: too many: %w", len(s.Linux.Devices), errdefs.ErrInvalidArgument)
	}
	toGuest := map[devNum]devNum{} // host numbers → the disk's
	used := map[string]bool{}
	for i := range s.Linux.Devices {
		d := &s.Linux.Devices[i]
		name := fmt.Sprintf("device %s (%s %d:%d)", d.Path, d.Type, d.Major, d.Minor)
		if !wire.ValidDevicePath(d.Path) {
			return fmt.Errorf("%s: the path must be absolute, clean and below /dev: %w", name, errdefs.ErrInvalidArgument)
		}
		if used[d.Path] {
			return fmt.Errorf("%s is listed twice: %w", name, errdefs.ErrInvalidArgument)
		}
		used[d.Path] = true
		switch {
		case d.Type == "p" || wire.GuestLocalDevice(d.Type, d.Major, d.Minor):
			if _, ok := serials[d.Path]; ok {
				return fmt.Errorf("%s is given a disk but is no block device: %w", name, errdefs.ErrInvalidArgument)
			}
			continue
		case d.Type != "b":
			return fmt.Errorf("%s: not a device of this guest: %w", name, errdefs.ErrInvalidArgument)
		}
		serial, ok := serials[d.Path]
		if !ok {
			return fmt.Errorf("%s: the host attached no disk for it: %w", name, errdefs.ErrInvalidArgument)
		}
		delete(serials, d.Path)
		if disk == nil {
			return fmt.Errorf("%s: this guest finds no disks: %w", name, errdefs.ErrFailedPrecondition)
		}
		major, minor, err := disk(serial)
		if err != nil {
			return fmt.Errorf("%s (disk %s): %w", name, serial, err)
		}
		if major <= 0 {
			return fmt.Errorf("%s: disk %s has no device numbers: %w", name, serial, errdefs.ErrFailedPrecondition)
		}
		host, guest := devNum{d.Major, d.Minor}, devNum{major, minor}
		if prev, ok := toGuest[host]; ok && prev != guest {
			return fmt.Errorf("%s: its numbers name two disks: %w", name, errdefs.ErrInvalidArgument)
		}
		toGuest[host] = guest
		l.WithField("device", d.Path).WithField("serial", serial).WithField("guest", fmt.Sprintf("%d:%d", major, minor)).Debug("block device")
		d.Major, d.Minor = major, minor
	}
	for path := range serials {
		return fmt.Errorf("a disk for %s, which is no device of the spec: %w", path, errdefs.ErrInvalidArgument)
	}
	if s.Linux.Resources != nil {
		s.Linux.Resources.Devices = adaptDeviceRules(ctx, id, s.Linux.Resources.Devices, toGuest)
	}
	return nil
}

// adaptDeviceRules rewrites the cgroup rules for the block devices'
// guest numbers. Rules naming a device's host numbers exactly name its
// guest numbers instead; other block rules that allow by number go (they
// name host devices this guest lacks, and the numbers are the VM's
// disks'). Where what a device is granted then differs from what its host
// numbers were granted (a rule by major only granted it, say), rules for
// its guest numbers granting exactly that are appended.
func adaptDeviceRules(ctx context.Context, id string, rules []specs.LinuxDeviceCgroup, toGuest map[devNum]devNum) []specs.LinuxDeviceCgroup {
	var out []specs.LinuxDeviceCgroup
	for _, r := range rules {
		if r.Type != "b" || (wire.AnyNumber(r.Major) && wire.AnyNumber(r.Minor)) {
			out = append(out, r)
			continue
		}
		if !wire.AnyNumber(r.Major) && !wire.AnyNumber(r.Minor) {
			if g, ok := toGuest[devNum{*r.Major, *r.Minor}]; ok {
				major, minor := g.major, g.minor
				r.Major, r.Minor = &major, &minor
				out = append(out, r)
				continue
			}
		}
		if r.Allow {
			log.G(ctx).WithField("container", id).WithField("rule", ruleString(r)).Info("device rule names host block devices the guest does not have: left out")
			continue
		}
		out = append(out, r)
	}
	for host, guest := range toGuest {
		want := grants(rules, host)
		if grants(out, guest) == want {
			continue
		}
		major, minor := guest.major, guest.minor
		out = append(out, specs.LinuxDeviceCgroup{Allow: false, Type: "b", Major: &major, Minor: &minor, Access: "rwm"})
		if want != "" {
			out = append(out, specs.LinuxDeviceCgroup{Allow: true, Type: "b", Major: &major, Minor: &minor, Access: want})
		}
	}
	return out
}

// grants is what the rules give block device n.
func grants(rules []specs.LinuxDeviceCgroup, n devNum) string {
	return wire.DeviceAccess(rules, "b", n.major, n.minor)
}

func ruleString(r specs.LinuxDeviceCgroup) string {
	num := func(n *int64) string {
		if wire.AnyNumber(n) {
			return "*"
		}
		return fmt.Sprint(*n)
	}
	verb := "deny"
	if r.Allow {
		verb = "allow"
	}
	return fmt.Sprintf("%s %s %s:%s %s", verb, r.Type, num(r.Major), num(r.Minor), r.Access)
}
