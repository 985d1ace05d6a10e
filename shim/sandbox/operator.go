package sandbox

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"

	volumeapi "github.com/qemu-shim/qemu-shim/api/volume/v1"
	"github.com/qemu-shim/qemu-shim/vm"
)

// OperatorDisk is a disk image an operator attached to a running VM for
// one of its containers, and mounted in it if Mount is set.
type OperatorDisk struct {
	Serial, Container, Image string
	ReadOnly                 bool
	// Mount is the path in the container, "" if the disk is not mounted.
	Mount, FSType string
}

// OperatorDisks is what the operator's API (shim/operator) asks of a
// sandbox. The caller checks the image and the container; the sandbox
// keeps the bookkeeping, and a container's disks go with its Release.
type OperatorDisks interface {
	// AttachOperatorDisk hot-plugs d.Image and mounts it at d.Mount in
	// the container, if set; it returns d with its serial.
	AttachOperatorDisk(ctx context.Context, d OperatorDisk) (OperatorDisk, error)
	// DetachOperatorDisk unplugs a disk of the container; a mounted one
	// only with force, which unmounts it first.
	DetachOperatorDisk(ctx context.Context, container, serial string, force bool) error
	// OperatorDisks lists the attached disks, by serial.
	OperatorDisks() []OperatorDisk
}

var _ OperatorDisks = (*VM)(nil)

// guestMountTimeout bounds a guest's mount or unmount of a disk.
const guestMountTimeout = 60 * time.Second

// opDisks is a VM's operator disks.
type opDisks struct {
	mu    sync.Mutex
	seq   int
	disks map[string]*opDisk // serial → disk
}

type opDisk struct {
	OperatorDisk
	busy bool // being attached or detached
}

// AttachOperatorDisk attaches and, if asked, mounts an operator's disk.
// An image is attached once per VM.
func (v *VM) AttachOperatorDisk(ctx context.Context, d OperatorDisk) (OperatorDisk, error) {
	if !v.running() {
		return d, fmt.Errorf("the VM is not running: %w", errdefs.ErrFailedPrecondition)
	}
	o := &v.ops
	o.mu.Lock()
	if o.disks == nil {
		o.disks = map[string]*opDisk{}
	}
	for _, e := range o.disks {
		if e.Image == d.Image {
			o.mu.Unlock()
			return d, fmt.Errorf("image %s is attached already, as disk %s of container %s: %w", d.Image, e.Serial, e.Container, errdefs.ErrAlreadyExists)
		}
	}
	o.seq++
	d.Serial = "o" + strconv.Itoa(o.seq)
	e := &opDisk{OperatorDisk: d, busy: true}
	o.disks[d.Serial] = e
	o.mu.Unlock()

	err := v.attachOperatorDisk(ctx, d)
	o.mu.Lock()
	if err != nil {
		delete(o.disks, d.Serial)
	} else {
		e.busy = false
	}
	o.mu.Unlock()
	return d, err
}

func (v *VM) attachOperatorDisk(ctx context.Context, d OperatorDisk) error {
	if err := v.inst.AttachDisk(ctx, vm.Disk{ID: d.Serial, Path: d.Image, ReadOnly: d.ReadOnly}); err != nil {
		return err
	}
	if d.Mount == "" {
		return nil
	}
	err := v.guestVolumes(ctx, func(ctx context.Context, c volumeapi.VolumesService) error {
		_, err := c.Mount(ctx, &volumeapi.MountRequest{ContainerId: d.Container, Serial: d.Serial, Target: d.Mount, Fstype: d.FSType, ReadOnly: d.ReadOnly})
		return err
	})
	if err != nil {
		if derr := v.inst.DetachDisk(context.WithoutCancel(ctx), d.Serial); derr != nil {
			log.G(ctx).WithError(derr).WithField("disk", d.Serial).Warn("detach a disk the guest could not mount")
		}
		return fmt.Errorf("guest: %w", err)
	}
	return nil
}

// guestVolumes calls the guest's volume service with a deadline; the
// guest's errors come back as errdefs errors.
func (v *VM) guestVolumes(ctx context.Context, call func(context.Context, volumeapi.VolumesService) error) error {
	cctx, cancel := context.WithTimeout(ctx, guestMountTimeout)
	defer cancel()
	c, err := v.inst.TaskClient(cctx)
	if err != nil {
		return err
	}
	if err := call(cctx, volumeapi.NewVolumesClient(c)); err != nil {
		return errgrpc.ToNative(err)
	}
	return nil
}

// DetachOperatorDisk unmounts (with force) and unplugs an operator's disk.
func (v *VM) DetachOperatorDisk(ctx context.Context, container, serial string, force bool) error {
	o := &v.ops
	o.mu.Lock()
	e, ok := o.disks[serial]
	switch {
	case !ok:
		o.mu.Unlock()
		return fmt.Errorf("no disk %s attached by the operator: %w", serial, errdefs.ErrNotFound)
	case e.Container != container:
		o.mu.Unlock()
		return fmt.Errorf("disk %s belongs to container %s, not %s: %w", serial, e.Container, container, errdefs.ErrNotFound)
	case e.busy:
		o.mu.Unlock()
		return fmt.Errorf("disk %s is being attached or detached: %w", serial, errdefs.ErrFailedPrecondition)
	case e.Mount != "" && !force:
		o.mu.Unlock()
		return fmt.Errorf("disk %s is mounted in container %s at %s: detach --force unmounts it first: %w", serial, container, e.Mount, errdefs.ErrFailedPrecondition)
	}
	e.busy = true
	o.mu.Unlock()
	err := v.detachOperatorDisk(ctx, e.OperatorDisk)
	o.mu.Lock()
	if err != nil {
		e.busy = false
	} else {
		delete(o.disks, serial)
	}
	o.mu.Unlock()
	return err
}

func (v *VM) detachOperatorDisk(ctx context.Context, d OperatorDisk) error {
	if d.Mount != "" {
		err := v.guestVolumes(ctx, func(ctx context.Context, c volumeapi.VolumesService) error {
			_, err := c.Unmount(ctx, &volumeapi.UnmountRequest{Serial: d.Serial, Force: true})
			return err
		})
		// Not found: the guest dropped it with its container.
		if err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("guest: unmount disk %s: %w", d.Serial, err)
		}
	}
	return v.inst.DetachDisk(ctx, d.Serial)
}

// OperatorDisks lists the operator's disks that are attached.
func (v *VM) OperatorDisks() []OperatorDisk {
	v.ops.mu.Lock()
	defer v.ops.mu.Unlock()
	var out []OperatorDisk
	for _, e := range v.ops.disks {
		if !e.busy {
			out = append(out, e.OperatorDisk)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, _ := strconv.Atoi(out[i].Serial[1:])
		b, _ := strconv.Atoi(out[j].Serial[1:])
		return a < b
	})
	return out
}

// releaseOperatorDisks detaches a released container's operator disks.
func (v *VM) releaseOperatorDisks(ctx context.Context, id string) {
	for _, d := range v.OperatorDisks() {
		if d.Container != id || !v.running() {
			continue
		}
		if err := v.DetachOperatorDisk(ctx, id, d.Serial, true); err != nil {
			log.G(ctx).WithError(err).WithField("disk", d.Serial).Warn("detach a released container's operator disk")
		}
	}
}
