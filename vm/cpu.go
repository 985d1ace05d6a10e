package vm

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	agentapi "github.com/qemu-shim/qemu-shim/api/agent/v1"
	"github.com/qemu-shim/qemu-shim/vm/cmdline"
	"github.com/qemu-shim/qemu-shim/vm/qmp"
)

func coreID(c hotpluggableCPU) int {
	if c.Props.CoreID != nil {
		return *c.Props.CoreID
	}
	return -1
}

// peripheralPrefix is where QEMU keeps the devices given an id; vCPUs of
// -smp live elsewhere (/machine/unattached) and cannot be unplugged.
const peripheralPrefix = "/machine/peripheral/"

// ACPI _OST status codes (ACPI 6.5, 6.3.5) QEMU passes on in ACPI_DEVICE_OST.
const (
	ostSuccess         = 0
	ostEjectInProgress = 0x84
	ostSourceEject     = 3
)

// CPUEject says whether SetCPUs gives vCPUs back to the host by ACPI eject
// under accel, and why. Under TCG, QEMU 7.2 ejects a vCPU (the guest
// offlines it and runs _EJ0) but leaves its heap corrupted: the next
// device_add of a vCPU, or a memory hot-plug, crashes QEMU (segmentation
// fault or "corrupted double-linked list" in tcg_cpu_realizefn's memory
// transaction). There the vCPU is only offlined in the guest: it runs
// nothing, so no container can use it, and it stays plugged for a later
// grow to online again.
func CPUEject(accel cmdline.Accel) (bool, string) {
	if accel == cmdline.KVM {
		return true, "vCPUs taken away are ejected (ACPI, device_del)"
	}
	return false, "QEMU under TCG crashes after a vCPU eject: vCPUs taken away are offlined in the guest and stay plugged"
}

// SetCPUs grows or shrinks the VM to n vCPUs and returns once the guest has
// exactly those online (at least those, when growing).
//
// Growing first onlines vCPUs the guest has offline, then plugs, always the
// lowest free core: QEMU lists slots in descending order, and a gap in
// APIC ids leaves the guest unable to reach the new CPU.
//
// Shrinking, where CPUEject allows, unplugs the highest hot-plugged cores
// (so that the plugged ones stay contiguous from core 0): device_del asks
// the guest by ACPI to eject the vCPU, the guest kernel offlines it itself
// and calls _EJ0. Boot vCPUs (which cannot be unplugged) beyond n, and
// every vCPU where ejecting is unsafe, are offlined by the guest instead,
// the highest-numbered first.
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
	slots, err := i.cpuSlots(ctx)
	if err != nil {
		return err
	}
	var free, plugged []hotpluggableCPU
	present := 0
	for _, s := range slots {
		switch {
		case s.QOMPath == "":
			free = append(free, s)
		case strings.HasPrefix(s.QOMPath, peripheralPrefix):
			plugged = append(plugged, s)
			present++
		default:
			present++
		}
	}
	info, err := i.agent.Info(ctx, &agentapi.InfoRequest{})
	if err != nil {
		return fmt.Errorf("vm %s: ask the guest its CPUs: %w", i.cfg.ID, err)
	}
	online := int(info.CpusOnline)
	exactly := func(info *agentapi.InfoResponse) bool { return int(info.CpusOnline) == n }
	eject, _ := CPUEject(i.accel)
	if n <= present {
		if n < present && eject && online == present {
			slices.SortFunc(plugged, func(a, b hotpluggableCPU) int { return coreID(b) - coreID(a) })
			for _, s := range plugged[:min(present-n, len(plugged))] {
				if err := i.unplugCPU(ctx, s); err != nil {
					return err
				}
				present--
				online--
			}
		}
		// Boot vCPUs beyond n, all of them where ejecting is unsafe, and
		// offline ones a grow within the present vCPUs brings back.
		if online != n {
			if err := i.setGuestCPUs(ctx, n); err != nil {
				return err
			}
		}
		return i.waitGuest(ctx, fmt.Sprintf("%d vCPUs online", n), exactly)
	}
	if n-present > len(free) {
		return fmt.Errorf("vm %s: %d vCPUs asked, QEMU has slots for %d: %w", i.cfg.ID, n, present+len(free), errdefs.ErrResourceExhausted)
	}
	if online < present {
		// What an earlier shrink offlined comes back before more is plugged.
		if err := i.setGuestCPUs(ctx, present); err != nil {
			return err
		}
	}
	slices.SortFunc(free, func(a, b hotpluggableCPU) int { return coreID(a) - coreID(b) })
	for _, s := range free[:n-present] {
		i.hp.seq++
		id := fmt.Sprintf("cpu-%d-%d", coreID(s), i.hp.seq)
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

// setGuestCPUs has the guest online or offline vCPUs until n are online.
func (i *Instance) setGuestCPUs(ctx context.Context, n int) error {
	if _, err := i.agent.SetCPUsOnline(ctx, &agentapi.SetCPUsOnlineRequest{Count: uint32(n)}); err != nil {
		return fmt.Errorf("vm %s: have the guest keep %d vCPUs online: %w", i.cfg.ID, n, err)
	}
	return nil
}

func (i *Instance) cpuSlots(ctx context.Context) ([]hotpluggableCPU, error) {
	var slots []hotpluggableCPU
	if err := i.qmp.Run(ctx, "query-hotpluggable-cpus", nil, &slots); err != nil {
		return nil, fmt.Errorf("vm %s: %w", i.cfg.ID, err)
	}
	return slots, nil
}

// unplugCPU ejects one hot-plugged vCPU and returns once QEMU has removed
// it. QEMU 7.2 sends no DEVICE_DELETED naming a vCPU it ejected, only one
// for its lapic child (measured under TCG: it emits that event when a
// device is finalized, and the vCPU apparently never is), so the end of the eject is the guest's _OST: "ejection in progress"
// naming the device and its slot, then "success" for that slot once _EJ0
// ran. Any other status is the guest refusing (say, it could not offline
// the CPU). A DEVICE_DELETED naming the device, as a later QEMU may send,
// ends the wait too.
func (i *Instance) unplugCPU(ctx context.Context, s hotpluggableCPU) error {
	id := path.Base(s.QOMPath)
	events, unsubscribe := i.qmp.Subscribe()
	defer unsubscribe()
	start := time.Now()
	if err := i.qmp.Run(ctx, "device_del", deviceDel{ID: id}, nil); err != nil {
		return fmt.Errorf("vm %s: unplug vCPU %s: %w", i.cfg.ID, id, err)
	}
	wctx, cancel := context.WithTimeout(ctx, unplugTimeout)
	defer cancel()
	slot := ""
	var refused error
	_, err := qmp.WaitEvent(wctx, events, func(e qmp.Event) bool {
		switch e.Name {
		case "DEVICE_DELETED":
			return e.Data["device"] == id || e.Data["path"] == s.QOMPath
		case "ACPI_DEVICE_OST":
			info, _ := e.Data["info"].(map[string]any)
			if info["slot-type"] != "CPU" || info["source"] != float64(ostSourceEject) {
				return false
			}
			status, _ := info["status"].(float64)
			if info["device"] == id {
				slot, _ = info["slot"].(string)
				if status != ostEjectInProgress && status != ostSuccess {
					refused = fmt.Errorf("vm %s: the guest refused to eject vCPU %s (ACPI _OST status %#x): %w", i.cfg.ID, id, int(status), errdefs.ErrFailedPrecondition)
					return true
				}
			}
			return status == ostSuccess && slot != "" && info["slot"] == slot
		}
		return false
	})
	if refused != nil {
		return refused
	}
	if err != nil {
		return fmt.Errorf("vm %s: guest did not eject vCPU %s in %v: %w", i.cfg.ID, id, time.Since(start).Round(time.Millisecond), err)
	}
	// QEMU frees the slot before the guest's final _OST.
	slots, err := i.cpuSlots(ctx)
	if err != nil {
		return err
	}
	for _, t := range slots {
		if t.QOMPath == s.QOMPath {
			return fmt.Errorf("vm %s: vCPU %s still in its slot after the guest ejected it: %w", i.cfg.ID, id, errdefs.ErrUnknown)
		}
	}
	i.hp.cpus = slices.DeleteFunc(i.hp.cpus, func(c string) bool { return c == id })
	return nil
}

// MaxCPUs is the most vCPUs hot-plug can reach.
func (i *Instance) MaxCPUs() int { return i.cfg.MaxCPUs }
