package sandbox

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/log"

	eventsapi "github.com/qemu-shim/qemu-shim/api/events/v1"
	"github.com/qemu-shim/qemu-shim/internal/transport"
	"github.com/qemu-shim/qemu-shim/shim/config"
	"github.com/qemu-shim/qemu-shim/shim/share"
	"github.com/qemu-shim/qemu-shim/vm"
)

// VM is the sandbox of a QEMU VM.
type VM struct {
	inst *vm.Instance
	cfg  vm.Config
	spec Spec

	disks diskSet
	ops   opDisks

	netMu sync.Mutex
	net   *wiredNetwork

	shareMu sync.Mutex
	staging *share.Staging    // nil when the VM has no share
	staged  map[string]string // container → its entry in the staging directory

	stopOnce sync.Once
	stopErr  error
}

var _ Sandbox = (*VM)(nil)

// Boot starts a VM for spec and waits until its task service answers.
func Boot(ctx context.Context, spec Spec) (Sandbox, error) {
	cfg := spec.Config
	m, err := cfg.VM.Machine(spec.Size)
	if err != nil {
		return nil, err
	}
	vcfg := vmConfig(cfg, spec.Name, m)
	if spec.Share {
		vcfg.Share = &vm.Share{Virtiofsd: cfg.VM.Virtiofsd}
	}
	inst, err := start(ctx, cfg, vcfg)
	if err != nil {
		return nil, err
	}
	if _, err := inst.TaskClient(ctx); err != nil {
		inst.Shutdown(context.WithoutCancel(ctx))
		return nil, err
	}
	v := &VM{inst: inst, cfg: vcfg, spec: spec, staged: map[string]string{}}
	if inst.Restored() && (m.CPUs > cfg.VM.CPUs || m.MemoryMiB > inst.MemoryMiB()) {
		// A template has the configured base size: grow it to what the
		// first container asks.
		if err := v.Grow(ctx, m.CPUs, m.MemoryMiB); err != nil {
			inst.Shutdown(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("grow the restored VM to %d vCPUs, %d MiB: %w", m.CPUs, m.MemoryMiB, err)
		}
	}
	v.disks.init(inst, cfg.Rootfs)
	if dir := inst.ShareDir(); dir != "" {
		v.staging = &share.Staging{Dir: dir, Pid: inst.ShareNamespacePid()}
	}
	if log.GetLevel() >= log.DebugLevel && !inst.Restored() {
		// Not on the way: the guest is busy starting its task service. (A
		// restored guest's timeline is its template's boot, and asking
		// would take its vCPUs from the first container's start.)
		go v.logTimeline(context.WithoutCancel(ctx))
	}
	return v, nil
}

// vmConfig is the VM named name, of size m, as cfg configures it.
func vmConfig(cfg config.Config, name string, m config.Machine) vm.Config {
	return vm.Config{
		ID:                 name,
		StateRoot:          cfg.VM.StateRoot,
		QEMU:               cfg.VM.QEMU,
		Kernel:             cfg.VM.Kernel,
		Initrd:             cfg.VM.Initrd,
		Tools:              cfg.VM.Tools,
		Accel:              cfg.VM.Accel,
		Transport:          transport.Kind(cfg.VM.Transport),
		CPUs:               m.CPUs,
		MaxCPUs:            m.MaxCPUs,
		MemoryMiB:          m.MemoryMiB,
		MaxMemoryMiB:       m.MaxMemoryMiB,
		VirtioMemMiB:       m.VirtioMemMiB,
		TCGCacheMiB:        cfg.VM.TCGCacheMiB,
		ConsoleLogMaxBytes: int64(cfg.VM.ConsoleLogMaxKiB) << 10,
		KernelParams:       cfg.VM.KernelParams,
		BootTimeout:        cfg.VM.BootTimeout.Duration,
		Debug:              cfg.VM.Debug,

		AllowUnconfined: cfg.VM.AllowUnconfined,
		QEMUUIDFirst:    cfg.VM.QEMUUIDFirst,
		QEMUUIDCount:    cfg.VM.QEMUUIDCount,
	}
}

// logTimeline logs where the guest's boot time went, for whoever debugs
// start-up.
func (v *VM) logTimeline(ctx context.Context) {
	info, err := v.inst.Info(ctx)
	if err != nil {
		return
	}
	steps := ""
	for _, st := range info.BootTimeline {
		steps += fmt.Sprintf(" %s@%.3f", st.Name, float64(st.AtNs)/1e9)
	}
	log.G(ctx).WithField("steps", steps).WithField("uptime", float64(info.UptimeNs)/1e9).Debug("guest timeline")
}

// Tasks returns the guest's task service over the VM's current task
// connection.
func (v *VM) Tasks(ctx context.Context) (taskAPI.TTRPCTaskService, error) {
	c, err := v.inst.TaskClient(ctx)
	if err != nil {
		return nil, err
	}
	return taskAPI.NewTTRPCTaskClient(c), nil
}

// Events streams the guest's events.
func (v *VM) Events(ctx context.Context, after uint64) (eventsapi.Events_StreamClient, error) {
	c, err := v.inst.TaskClient(ctx)
	if err != nil {
		return nil, err
	}
	return eventsapi.NewEventsClient(c).Stream(ctx, &eventsapi.StreamRequest{After: after})
}

// DialStream opens a stdio stream.
func (v *VM) DialStream(ctx context.Context, name string) (net.Conn, error) {
	return v.inst.DialStream(ctx, name)
}

// StateDir is the VM's state directory.
func (v *VM) StateDir() string { return v.inst.StateDir() }

// Done is closed when QEMU has exited and the VM is cleaned up.
func (v *VM) Done() <-chan struct{} { return v.inst.Done() }

// ExitStatus says how QEMU ended.
func (v *VM) ExitStatus() string { return v.inst.ExitStatus() }

// ConsoleTail is the end of the guest's console.
func (v *VM) ConsoleTail(max int) []byte { return v.inst.ConsoleTail(max) }

// running says whether the guest can still be asked anything.
func (v *VM) running() bool { return v.inst.State() == vm.StateRunning }

// Stop shuts the VM down and unwires its network; the share's entries go
// with the VM's state directory.
func (v *VM) Stop(ctx context.Context) error { return v.end(ctx, v.inst.Shutdown) }

// Kill ends the VM at once, without asking the guest.
func (v *VM) Kill(ctx context.Context) error { return v.end(ctx, v.inst.Kill) }

func (v *VM) end(ctx context.Context, how func(context.Context) error) error {
	v.stopOnce.Do(func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		v.stopErr = how(sctx)
		v.netMu.Lock()
		if v.net != nil {
			v.unwire(sctx, v.net)
			v.net = nil
		}
		v.netMu.Unlock()
	})
	return v.stopErr
}

// Release gives back what container id holds. The last container's
// layers stay plugged in: the VM stops next (the guest may still have them
// mounted: the shim does not ask a VM's only container to be deleted in
// the guest; its writable layer's file goes), so unplugging them one by
// one would only delay the stop (by about 0.12 s under TCG).
// Operator disks are still detached: the guest may have one mounted.
func (v *VM) Release(ctx context.Context, id string, last bool) {
	v.releaseOperatorDisks(ctx, id)
	v.disks.release(ctx, id, v.running() && !last)
	v.netMu.Lock()
	if v.net != nil && v.net.owner == id && last {
		// The VM's last container: its cards go before the poststop
		// hooks (CNI DEL) take the namespace's interfaces away.
		v.unwire(ctx, v.net)
		v.net = nil
	}
	v.netMu.Unlock()
	v.unstage(ctx, id)
}
