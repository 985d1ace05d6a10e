package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/log"

	"github.com/qemu-shim/qemu-shim/api/wire"
	"github.com/qemu-shim/qemu-shim/shim/config"
	"github.com/qemu-shim/qemu-shim/shim/rootfs"
	"github.com/qemu-shim/qemu-shim/vm"
)

// diskSet is the disks a VM holds for its containers: read-only layers
// and host block devices shared by every container that uses them
// (attached once, detached with their last user) and each container's own
// writable layer.
type diskSet struct {
	inst *vm.Instance
	conv rootfs.Converter

	mu     sync.Mutex
	seq    int
	layers map[string]*layerDisk // layer image path (or devKey) → disk
	owners map[string]*heldDisks // container → what it holds
}

// layerDisk is a shared layer or host block device; ready is closed once
// its attach is done, err says how it went.
type layerDisk struct {
	key    string // in diskSet.layers
	serial string
	refs   int
	ready  chan struct{}
	err    error
}

type heldDisks struct {
	owned  []ownedDisk
	layers []*layerDisk
}

type ownedDisk struct{ serial, path string }

func (d *diskSet) init(inst *vm.Instance, cfg config.Rootfs) {
	d.inst = inst
	d.conv = rootfs.Converter{LayerCache: cfg.LayerCache, UpperSizeMiB: cfg.UpperSizeMiB, MaxAge: cfg.LayerCacheMaxAge.Duration}
	d.layers = map[string]*layerDisk{}
	d.owners = map[string]*heldDisks{}
}

// AttachRootfs converts and attaches a container's root filesystem. On
// error, what was attached for it is released.
func (v *VM) AttachRootfs(ctx context.Context, id, bundle string, mounts []*types.Mount) (_ []*types.Mount, retErr error) {
	defer func() {
		if retErr != nil {
			v.disks.release(ctx, id, v.running())
			// Made by Convert even when a disk before it failed to attach.
			os.Remove(filepath.Join(bundle, rootfs.UpperImageName))
		}
	}()
	disks, err := v.disks.conv.Convert(ctx, bundle, mounts)
	if err != nil {
		return nil, err
	}
	// This container's layers are fresh now; what nobody used for long goes.
	v.disks.conv.Prune(ctx)
	var guest []*types.Mount
	for _, d := range disks {
		serial, err := v.disks.attach(ctx, id, d)
		if err != nil {
			return nil, fmt.Errorf("container %s: %w", id, err)
		}
		m := &types.Mount{Type: d.Type, Source: wire.SerialPrefix + serial}
		if d.ReadOnly {
			m.Options = []string{"ro"}
		}
		guest = append(guest, m)
	}
	return guest, nil
}

func (d *diskSet) held(id string) *heldDisks {
	h := d.owners[id]
	if h == nil {
		h = &heldDisks{}
		d.owners[id] = h
	}
	return h
}

// AttachBlockDevice attaches a host block device (its node on the host)
// to the VM as a raw disk, once for all the containers that use it the
// same way, and returns its serial. Release detaches it with its last
// user.
func (v *VM) AttachBlockDevice(ctx context.Context, id, path string, readOnly bool) (string, error) {
	key := devKey(path, readOnly)
	serial, err := v.disks.attachAs(ctx, id, key, "b", rootfs.Disk{Path: path, ReadOnly: readOnly})
	if err != nil {
		return "", fmt.Errorf("container %s: block device %s: %w", id, path, err)
	}
	return serial, nil
}

// devKey names a host block device in diskSet.layers, apart from layer
// images and from the same device attached the other way.
func devKey(path string, readOnly bool) string {
	if readOnly {
		return "dev-ro:" + path
	}
	return "dev-rw:" + path
}

// attach hands a disk to the guest: a layer once per VM (a second user
// waits for the first's attach), a container's own disk each time.
func (d *diskSet) attach(ctx context.Context, id string, disk rootfs.Disk) (string, error) {
	prefix := "u"
	if !disk.Owned {
		prefix = "l"
	}
	return d.attachAs(ctx, id, disk.Path, prefix, disk)
}

// attachAs attaches disk with a serial of prefix and a number; a disk not
// Owned is shared under key.
func (d *diskSet) attachAs(ctx context.Context, id, key, prefix string, disk rootfs.Disk) (string, error) {
	d.mu.Lock()
	if !disk.Owned {
		if l, ok := d.layers[key]; ok {
			l.refs++
			d.held(id).layers = append(d.held(id).layers, l)
			d.mu.Unlock()
			select {
			case <-l.ready:
			case <-ctx.Done():
				return "", ctx.Err()
			}
			return l.serial, l.err
		}
	}
	d.seq++
	serial := prefix + strconv.Itoa(d.seq)
	var l *layerDisk
	if !disk.Owned {
		l = &layerDisk{key: key, serial: serial, refs: 1, ready: make(chan struct{})}
		d.layers[key] = l
		d.held(id).layers = append(d.held(id).layers, l)
	}
	d.mu.Unlock()

	err := d.inst.AttachDisk(ctx, vm.Disk{ID: serial, Path: disk.Path, ReadOnly: disk.ReadOnly})
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case l != nil:
		l.err = err
		if err != nil && d.layers[key] == l {
			// Not attached: the next user tries again.
			delete(d.layers, key)
		}
		close(l.ready)
	case err != nil:
		os.Remove(disk.Path)
	default:
		d.held(id).owned = append(d.held(id).owned, ownedDisk{serial: serial, path: disk.Path})
	}
	return serial, err
}

// release detaches a container's disks and the layers nobody else uses
// (while the guest runs), and removes its writable images.
func (d *diskSet) release(ctx context.Context, id string, running bool) {
	d.mu.Lock()
	h := d.owners[id]
	delete(d.owners, id)
	var detach []string
	if h != nil {
		for _, l := range h.layers {
			l.refs--
			if l.refs > 0 {
				continue
			}
			if d.layers[l.key] == l {
				delete(d.layers, l.key)
			}
			select {
			case <-l.ready:
				if l.err == nil {
					detach = append(detach, l.serial)
				}
			default: // its first user's attach is still under way
			}
		}
	}
	d.mu.Unlock()
	if h == nil {
		return
	}
	for _, o := range h.owned {
		if running {
			if err := d.inst.DetachDisk(ctx, o.serial); err != nil {
				log.G(ctx).WithError(err).WithField("disk", o.serial).Warn("detach writable layer")
			}
		}
		os.Remove(o.path)
	}
	for _, serial := range detach {
		if running {
			if err := d.inst.DetachDisk(ctx, serial); err != nil {
				log.G(ctx).WithError(err).WithField("disk", serial).Warn("detach layer or block device")
			}
		}
	}
}
