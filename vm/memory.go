package vm

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	agentapi "github.com/qemu-shim/qemu-shim/api/agent/v1"
	"github.com/qemu-shim/qemu-shim/vm/cmdline"
)

// MemoryMiB is the memory given to the guest so far: at boot plus plugged.
func (i *Instance) MemoryMiB() int {
	i.hp.mu.Lock()
	defer i.hp.mu.Unlock()
	total := i.cfg.MemoryMiB + i.hp.virtioMemMiB
	for _, d := range i.hp.dimms {
		total += d.sizeMiB
	}
	return total
}

// virtioMemPath is the virtio-mem device in QEMU's object tree.
const virtioMemPath = "/machine/peripheral/vmemdev0"

// setVirtioMem asks the virtio-mem device for mib and waits until QEMU
// reports the guest plugged (or unplugged) that much. QEMU's size-change
// event is rate-limited, so it polls the device's size instead.
func (i *Instance) setVirtioMem(ctx context.Context, mib int) error {
	if mib < 0 || mib > i.cfg.VirtioMemMiB {
		return fmt.Errorf("vm %s: virtio-mem %d MiB: at most %d: %w", i.cfg.ID, mib, i.cfg.VirtioMemMiB, errdefs.ErrInvalidArgument)
	}
	mib = (mib + 1) / 2 * 2
	want := uint64(mib) << 20
	if err := i.qmp.Run(ctx, "qom-set", qomSetSize{Path: virtioMemPath, Property: "requested-size", Value: want}, nil); err != nil {
		return fmt.Errorf("vm %s: virtio-mem: %w", i.cfg.ID, err)
	}
	ctx, cancel := context.WithTimeout(ctx, guestSettleTimeout)
	defer cancel()
	for {
		var size uint64
		if err := i.qmp.Run(ctx, "qom-get", qomGet{Path: virtioMemPath, Property: "size"}, &size); err != nil {
			return fmt.Errorf("vm %s: virtio-mem size: %w", i.cfg.ID, err)
		}
		if size == want {
			i.hp.virtioMemMiB = mib
			return nil
		}
		select {
		case <-ctx.Done():
			i.hp.virtioMemMiB = int(size >> 20)
			return fmt.Errorf("vm %s: the guest holds %d MiB of virtio-mem, %d MiB asked: %w", i.cfg.ID, size>>20, mib, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// AddMemory plugs a DIMM of sizeMiB and returns once the guest's memory has
// grown by it.
func (i *Instance) AddMemory(ctx context.Context, sizeMiB int) error {
	if err := i.state.require(i.cfg.ID, "hot-plug memory", StateRunning); err != nil {
		return err
	}
	if sizeMiB <= 0 || sizeMiB%128 != 0 {
		return fmt.Errorf("vm %s: memory hot-plug of %d MiB: want a positive multiple of 128 MiB: %w", i.cfg.ID, sizeMiB, errdefs.ErrInvalidArgument)
	}
	i.hp.mu.Lock()
	defer i.hp.mu.Unlock()
	plugged := 0
	for _, d := range i.hp.dimms {
		plugged += d.sizeMiB
	}
	if i.cfg.MemoryMiB+plugged+sizeMiB > i.cfg.MaxMemoryMiB {
		return fmt.Errorf("vm %s: %d MiB more would pass the %d MiB maximum: %w", i.cfg.ID, sizeMiB, i.cfg.MaxMemoryMiB, errdefs.ErrInvalidArgument)
	}
	if len(i.hp.dimms) >= i.cfg.MemorySlots {
		return fmt.Errorf("vm %s: all %d memory slots are used: %w", i.cfg.ID, i.cfg.MemorySlots, errdefs.ErrResourceExhausted)
	}
	before, err := i.agent.Info(ctx, &agentapi.InfoRequest{})
	if err != nil {
		return fmt.Errorf("vm %s: %w", i.cfg.ID, err)
	}
	i.hp.seq++
	id := fmt.Sprintf("dimm%d", i.hp.seq)
	backend := "mem-" + id
	// With a share, virtiofsd maps all of the guest's memory.
	obj := memoryBackendAdd{QOMType: cmdline.MemoryBackend(i.cfg.Share != nil), ID: backend, Size: uint64(sizeMiB) << 20, Share: i.cfg.Share != nil}
	if err := i.qmp.Run(ctx, "object-add", obj, nil); err != nil {
		return fmt.Errorf("vm %s: memory backend: %w", i.cfg.ID, err)
	}
	if err := i.qmp.Run(ctx, "device_add", dimmDeviceAdd{Driver: "pc-dimm", ID: id, Memdev: backend}, nil); err != nil {
		if derr := i.qmp.Run(context.WithoutCancel(ctx), "object-del", objectDel{ID: backend}, nil); derr != nil {
			log.G(ctx).WithError(derr).Warn("remove memory backend after failed plug")
		}
		return fmt.Errorf("vm %s: plug DIMM: %w", i.cfg.ID, err)
	}
	i.hp.dimms = append(i.hp.dimms, dimm{id: id, sizeMiB: sizeMiB})
	want := before.MemoryTotalBytes + uint64(sizeMiB)<<20
	return i.waitGuest(ctx, fmt.Sprintf("%d MiB of memory", want>>20), func(info *agentapi.InfoResponse) bool {
		return info.MemoryTotalBytes >= want
	})
}

// RemoveMemory unplugs the most recently added DIMM and returns its size.
// The guest must be able to give its memory back (it is onlined movable).
func (i *Instance) RemoveMemory(ctx context.Context) (int, error) {
	if err := i.state.require(i.cfg.ID, "unplug memory", StateRunning); err != nil {
		return 0, err
	}
	i.hp.mu.Lock()
	defer i.hp.mu.Unlock()
	if len(i.hp.dimms) == 0 {
		return 0, fmt.Errorf("vm %s: no hot-plugged memory to remove: %w", i.cfg.ID, errdefs.ErrNotFound)
	}
	return i.removeDIMM(ctx, len(i.hp.dimms)-1)
}

// removeDIMM unplugs one DIMM. Called with hp.mu held.
func (i *Instance) removeDIMM(ctx context.Context, idx int) (int, error) {
	d := i.hp.dimms[idx]
	if err := i.unplug(ctx, d.id); err != nil {
		return 0, err
	}
	i.hp.dimms = append(i.hp.dimms[:idx:idx], i.hp.dimms[idx+1:]...)
	if err := i.qmp.Run(ctx, "object-del", objectDel{ID: "mem-" + d.id}, nil); err != nil {
		return d.sizeMiB, fmt.Errorf("vm %s: remove memory backend: %w", i.cfg.ID, err)
	}
	return d.sizeMiB, nil
}

// SetMemory brings the guest's memory (boot memory and DIMMs) to at least
// mib, rounded up to 128 MiB, giving back DIMMs that are no longer needed:
// a DIMM larger than the excess is replaced by a smaller one, plugged first
// so that the guest never has less than asked. Unplugging needs the guest
// to free the memory; when it cannot, the error says so and the memory
// stays.
func (i *Instance) SetMemory(ctx context.Context, mib int) error {
	if err := i.state.require(i.cfg.ID, "resize memory", StateRunning); err != nil {
		return err
	}
	if i.cfg.VirtioMemMiB > 0 {
		i.hp.mu.Lock()
		defer i.hp.mu.Unlock()
		return i.setVirtioMem(ctx, max(mib-i.cfg.MemoryMiB, 0))
	}
	mib = max((mib+127)/128*128, i.cfg.MemoryMiB)
	if have := i.MemoryMiB(); mib > have {
		return i.AddMemory(ctx, (mib-have+127)/128*128)
	}
	for {
		i.hp.mu.Lock()
		total := i.cfg.MemoryMiB
		for _, d := range i.hp.dimms {
			total += d.sizeMiB
		}
		excess := total - mib
		idx := -1
		for j := len(i.hp.dimms) - 1; j >= 0; j-- {
			if i.hp.dimms[j].sizeMiB <= excess {
				idx = j
				break
			}
		}
		if idx >= 0 {
			_, err := i.removeDIMM(ctx, idx)
			i.hp.mu.Unlock()
			if err != nil {
				return err
			}
			continue
		}
		// Only DIMMs larger than the excess are left: replace the newest.
		if excess < 128 || len(i.hp.dimms) == 0 {
			i.hp.mu.Unlock()
			return nil
		}
		replace := i.hp.dimms[len(i.hp.dimms)-1].sizeMiB - excess
		i.hp.mu.Unlock()
		if err := i.AddMemory(ctx, replace); err != nil {
			return err
		}
		i.hp.mu.Lock()
		_, err := i.removeDIMM(ctx, len(i.hp.dimms)-2)
		i.hp.mu.Unlock()
		if err != nil {
			return err
		}
	}
}
