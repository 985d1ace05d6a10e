package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	agentapi "github.com/qemu-shim/qemu-shim/api/agent/v1"
	"github.com/qemu-shim/qemu-shim/vm/cmdline"
	"github.com/qemu-shim/qemu-shim/vm/qmp"
)

// How long the guest gets to online or release what was plugged.
var (
	guestSettleTimeout = 30 * time.Second
	unplugTimeout      = 30 * time.Second
)

// hotplugState is what has been plugged into a running VM. One hot-plug
// operation runs at a time.
type hotplugState struct {
	mu sync.Mutex
	// ports[i] is the network card on PCIe root port i, or "".
	ports []string
	// targets[t] is the disk on SCSI target t of the controller, or "".
	targets []string
	disks   map[string]int // disk ID → SCSI target, -1 for a boot disk
	dimms   []dimm
	cpus    []string // device ids of hot-plugged CPUs, in plug order
	seq     int
	// virtioMemMiB is what the virtio-mem device was last asked to give.
	virtioMemMiB int
}

type dimm struct {
	id      string
	sizeMiB int
}

func (h *hotplugState) init(cfg Config) {
	h.ports = make([]string, cfg.HotplugPorts)
	h.targets = make([]string, cmdline.ScsiTargets)
	h.disks = map[string]int{}
	for _, d := range cfg.Disks {
		h.disks[d.ID] = -1 // present at boot, not on a hot-plug port
	}
}

// hotpluggableCPU is an entry of query-hotpluggable-cpus.
type hotpluggableCPU struct {
	Type       string         `json:"type"`
	VCPUsCount int            `json:"vcpus-count"`
	QOMPath    string         `json:"qom-path"`
	Props      map[string]any `json:"props"`
}

func coreID(c hotpluggableCPU) int {
	if v, ok := c.Props["core-id"].(float64); ok {
		return int(v)
	}
	return -1
}

// SetCPUs grows the VM to n vCPUs and returns once the guest has them
// online. Plugging always takes the lowest free core: QEMU lists slots in
// descending order, and a gap in APIC ids leaves the guest unable to reach
// the new CPU.
func (i *Instance) SetCPUs(ctx context.Context, n int) error {
	if err := i.state.require(i.cfg.ID, "hot-plug CPUs", StateRunning); err != nil {
		return err
	}
	if n < 1 {
		return fmt.Errorf("vm %s: %d vCPUs: want at least 1: %w", i.cfg.ID, n, errdefs.ErrInvalidArgument)
	}
	if n > i.cfg.MaxCPUs {
		return fmt.Errorf("vm %s: %d vCPUs asked, at most %d configured: %w", i.cfg.ID, n, i.cfg.MaxCPUs, errdefs.ErrInvalidArgument)
	}
	i.hp.mu.Lock()
	defer i.hp.mu.Unlock()
	var slots []hotpluggableCPU
	if err := i.qmp.Run(ctx, "query-hotpluggable-cpus", nil, &slots); err != nil {
		return fmt.Errorf("vm %s: %w", i.cfg.ID, err)
	}
	present := 0
	var free []hotpluggableCPU
	for _, s := range slots {
		if s.QOMPath != "" {
			present++
		} else {
			free = append(free, s)
		}
	}
	if n < present {
		// The cloud kernel does not finish an ACPI eject of a vCPU (QEMU's
		// device_del never completes), so vCPUs only grow.
		return fmt.Errorf("vm %s: shrinking from %d to %d vCPUs: the guest cannot give vCPUs back: %w", i.cfg.ID, present, n, errdefs.ErrNotImplemented)
	}
	slices.SortFunc(free, func(a, b hotpluggableCPU) int { return coreID(a) - coreID(b) })
	for _, s := range free[:n-present] {
		id := fmt.Sprintf("cpu-%d", coreID(s))
		args := map[string]any{"driver": s.Type, "id": id}
		for k, v := range s.Props {
			args[k] = v
		}
		if err := i.qmp.Run(ctx, "device_add", args, nil); err != nil {
			return fmt.Errorf("vm %s: plug vCPU %s: %w", i.cfg.ID, id, err)
		}
		i.hp.cpus = append(i.hp.cpus, id)
	}
	// The agent onlines new CPUs as the kernel announces them.
	return i.waitGuest(ctx, fmt.Sprintf("%d vCPUs online", n), func(info *agentapi.InfoResponse) bool {
		return int(info.CpusOnline) >= n
	})
}

// waitGuest polls the agent until cond holds or the settle timeout ends.
func (i *Instance) waitGuest(ctx context.Context, what string, cond func(*agentapi.InfoResponse) bool) error {
	ctx, cancel := context.WithTimeout(ctx, guestSettleTimeout)
	defer cancel()
	var last *agentapi.InfoResponse
	for {
		info, err := i.agent.Info(ctx, &agentapi.InfoRequest{})
		if err == nil {
			last = info
			if cond(info) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("vm %s: guest did not reach %s (last report: %d CPUs, %d MiB): %w",
				i.cfg.ID, what, last.GetCpusOnline(), last.GetMemoryTotalBytes()>>20, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// MaxCPUs is the most vCPUs hot-plug can reach.
func (i *Instance) MaxCPUs() int { return i.cfg.MaxCPUs }

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
	if err := i.qmp.Run(ctx, "qom-set", map[string]any{"path": virtioMemPath, "property": "requested-size", "value": want}, nil); err != nil {
		return fmt.Errorf("vm %s: virtio-mem: %w", i.cfg.ID, err)
	}
	ctx, cancel := context.WithTimeout(ctx, guestSettleTimeout)
	defer cancel()
	for {
		var size uint64
		if err := i.qmp.Run(ctx, "qom-get", map[string]any{"path": virtioMemPath, "property": "size"}, &size); err != nil {
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

// Info asks the agent what the guest sees.
func (i *Instance) Info(ctx context.Context) (*agentapi.InfoResponse, error) {
	if err := i.state.require(i.cfg.ID, "query the agent", StateRunning); err != nil {
		return nil, err
	}
	return i.agent.Info(ctx, &agentapi.InfoRequest{})
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
	obj := map[string]any{"qom-type": cmdline.MemoryBackend(i.cfg.Share != nil), "id": backend, "size": uint64(sizeMiB) << 20}
	if i.cfg.Share != nil {
		obj["share"] = true // virtiofsd maps all of the guest's memory
	}
	if err := i.qmp.Run(ctx, "object-add", obj, nil); err != nil {
		return fmt.Errorf("vm %s: memory backend: %w", i.cfg.ID, err)
	}
	if err := i.qmp.Run(ctx, "device_add", map[string]any{"driver": "pc-dimm", "id": id, "memdev": backend}, nil); err != nil {
		if derr := i.qmp.Run(context.WithoutCancel(ctx), "object-del", map[string]any{"id": backend}, nil); derr != nil {
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
	if err := i.qmp.Run(ctx, "object-del", map[string]any{"id": "mem-" + d.id}, nil); err != nil {
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

// unplug asks QEMU to remove a device and waits until the guest let go.
func (i *Instance) unplug(ctx context.Context, id string) error {
	events, unsubscribe := i.qmp.Subscribe()
	defer unsubscribe()
	if err := i.qmp.Run(ctx, "device_del", map[string]any{"id": id}, nil); err != nil {
		return fmt.Errorf("vm %s: unplug %s: %w", i.cfg.ID, id, err)
	}
	wctx, cancel := context.WithTimeout(ctx, unplugTimeout)
	defer cancel()
	_, err := qmp.WaitEvent(wctx, events, func(e qmp.Event) bool {
		return e.Name == "DEVICE_DELETED" && e.Data["device"] == id
	})
	if err != nil {
		return fmt.Errorf("vm %s: guest did not release %s: %w", i.cfg.ID, id, err)
	}
	return nil
}

// AttachDisk hot-plugs a disk image or host block device as a SCSI disk (LUN 0 of the lowest
// free target of the VM's virtio-scsi controller); the guest finds it by
// d.ID as serial (VPD page 0x80).
func (i *Instance) AttachDisk(ctx context.Context, d Disk) error {
	if err := i.state.require(i.cfg.ID, "attach a disk", StateRunning); err != nil {
		return err
	}
	if err := i.cfg.checkDisk(&d); err != nil {
		return fmt.Errorf("vm %s: %w", i.cfg.ID, err)
	}
	i.hp.mu.Lock()
	defer i.hp.mu.Unlock()
	if _, ok := i.hp.disks[d.ID]; ok || slices.Contains(i.hp.ports, d.ID) {
		return fmt.Errorf("vm %s: device %s: %w", i.cfg.ID, d.ID, errdefs.ErrAlreadyExists)
	}
	target := slices.Index(i.hp.targets, "")
	if target < 0 {
		return fmt.Errorf("vm %s: all %d disk targets of the SCSI controller are in use: %w", i.cfg.ID, len(i.hp.targets), errdefs.ErrResourceExhausted)
	}
	format := d.Format
	if format == "" {
		format = "raw"
	}
	fileNode, drvNode := "file-"+d.ID, "drv-"+d.ID
	protocol := "file" // QEMU's file driver refuses block devices
	if st, err := os.Stat(d.Path); err == nil && st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0 {
		protocol = "host_device"
	}
	if err := i.qmp.Run(ctx, "blockdev-add", map[string]any{
		"driver": protocol, "node-name": fileNode, "filename": d.Path, "read-only": d.ReadOnly,
	}, nil); err != nil {
		return fmt.Errorf("vm %s: open disk %s: %w", i.cfg.ID, d.Path, err)
	}
	undo := func(nodes ...string) {
		for _, n := range nodes {
			if err := i.qmp.Run(context.WithoutCancel(ctx), "blockdev-del", map[string]any{"node-name": n}, nil); err != nil {
				log.G(ctx).WithError(err).WithField("node", n).Warn("remove block node after failed attach")
			}
		}
	}
	if err := i.qmp.Run(ctx, "blockdev-add", map[string]any{
		"driver": format, "node-name": drvNode, "file": fileNode, "read-only": d.ReadOnly,
	}, nil); err != nil {
		undo(fileNode)
		return fmt.Errorf("vm %s: disk %s as %s: %w", i.cfg.ID, d.Path, format, err)
	}
	if err := i.qmp.Run(ctx, "device_add", map[string]any{
		"driver": "scsi-hd", "id": d.ID, "drive": drvNode, "serial": d.ID,
		"bus": cmdline.ScsiControllerID + ".0", "channel": 0, "scsi-id": target, "lun": 0,
	}, nil); err != nil {
		undo(drvNode, fileNode)
		return fmt.Errorf("vm %s: plug disk %s: %w", i.cfg.ID, d.ID, err)
	}
	i.hp.targets[target] = d.ID
	i.hp.disks[d.ID] = target
	return nil
}

// DetachDisk unplugs a disk, waits for the guest to release it and closes
// the image in QEMU.
func (i *Instance) DetachDisk(ctx context.Context, id string) error {
	if err := i.state.require(i.cfg.ID, "detach a disk", StateRunning); err != nil {
		return err
	}
	i.hp.mu.Lock()
	defer i.hp.mu.Unlock()
	target, ok := i.hp.disks[id]
	if !ok {
		return fmt.Errorf("vm %s: disk %s: %w", i.cfg.ID, id, errdefs.ErrNotFound)
	}
	if err := i.unplug(ctx, id); err != nil {
		return err
	}
	delete(i.hp.disks, id)
	if target >= 0 {
		i.hp.targets[target] = ""
	}
	var errs []error
	for _, n := range []string{"drv-" + id, "file-" + id} {
		if err := i.qmp.Run(ctx, "blockdev-del", map[string]any{"node-name": n}, nil); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("vm %s: close disk %s: %w", i.cfg.ID, id, err)
	}
	return nil
}
