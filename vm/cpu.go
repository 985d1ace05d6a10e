package vm

import (
	"context"
	"fmt"
	"slices"

	"github.com/containerd/errdefs"

	agentapi "github.com/qemu-shim/qemu-shim/api/agent/v1"
)

func coreID(c hotpluggableCPU) int {
	if c.Props.CoreID != nil {
		return *c.Props.CoreID
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
	if n-present > len(free) {
		return fmt.Errorf("vm %s: %d vCPUs asked, QEMU has slots for %d: %w", i.cfg.ID, n, present+len(free), errdefs.ErrResourceExhausted)
	}
	slices.SortFunc(free, func(a, b hotpluggableCPU) int { return coreID(a) - coreID(b) })
	for _, s := range free[:n-present] {
		id := fmt.Sprintf("cpu-%d", coreID(s))
		if err := i.qmp.Run(ctx, "device_add", s.Props.deviceAdd(s.Type, id), nil); err != nil {
			return fmt.Errorf("vm %s: plug vCPU %s: %w", i.cfg.ID, id, err)
		}
		i.hp.cpus = append(i.hp.cpus, id)
	}
	// The agent onlines new CPUs as the kernel announces them.
	return i.waitGuest(ctx, fmt.Sprintf("%d vCPUs online", n), func(info *agentapi.InfoResponse) bool {
		return int(info.CpusOnline) >= n
	})
}

// MaxCPUs is the most vCPUs hot-plug can reach.
func (i *Instance) MaxCPUs() int { return i.cfg.MaxCPUs }
