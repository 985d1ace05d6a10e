package vm

import (
	"context"
	"fmt"
	"sync"
	"time"

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
	// luns[n] is the disk on LUN n+1 of the controller's target 0, or "".
	luns  []string
	disks map[string]int // disk ID → index in luns, -1 for a boot disk
	// fdsets[id] is the descriptor set QEMU opened hot-plugged disk id from.
	fdsets map[string]int
	dimms  []dimm
	cpus   []string // device ids of hot-plugged CPUs, in plug order
	seq    int
	// virtioMemMiB is what the virtio-mem device was last asked to give.
	virtioMemMiB int
}

type dimm struct {
	id      string
	sizeMiB int
}

func (h *hotplugState) init(cfg Config) {
	h.ports = make([]string, cfg.HotplugPorts)
	h.luns = make([]string, cmdline.ScsiTargets)
	h.disks = map[string]int{}
	h.fdsets = map[string]int{}
	for _, d := range cfg.Disks {
		h.disks[d.ID] = -1 // present at boot, not on a hot-plug port
	}
}

// unplug asks QEMU to remove a device and waits until the guest let go.
func (i *Instance) unplug(ctx context.Context, id string) error {
	events, unsubscribe := i.qmp.Subscribe()
	defer unsubscribe()
	if err := i.qmp.Run(ctx, "device_del", deviceDel{ID: id}, nil); err != nil {
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

// Info asks the agent what the guest sees.
func (i *Instance) Info(ctx context.Context) (*agentapi.InfoResponse, error) {
	if err := i.state.require(i.cfg.ID, "query the agent", StateRunning); err != nil {
		return nil, err
	}
	return i.agent.Info(ctx, &agentapi.InfoRequest{})
}
