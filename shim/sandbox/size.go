package sandbox

import (
	"context"

	"github.com/containerd/log"
)

// Grow hot-plugs vCPUs and memory up to what is asked, waiting until the
// guest has them online.
func (v *VM) Grow(ctx context.Context, cpus, memMiB int) error {
	info, err := v.inst.Info(ctx)
	if err != nil {
		return err
	}
	if cpus > int(info.CpusOnline) {
		if err := v.inst.SetCPUs(ctx, cpus); err != nil {
			return err
		}
	}
	if memMiB > v.inst.MemoryMiB() {
		log.G(ctx).WithField("memory_mib", memMiB).Info("hot-plugging memory")
		if err := v.inst.SetMemory(ctx, memMiB); err != nil {
			return err
		}
	}
	return nil
}

// Shrink gives back what no container needs any more: vCPUs beyond cpus
// (ejected, or offlined in the guest where QEMU cannot eject them: see
// vm.CPUEject), then memory: the newest DIMMs while the rest still cover
// memMiB. The guest may refuse (memory in use, a CPU that cannot go
// offline): that is logged, not an error; the VM keeps what it could not
// give back.
func (v *VM) Shrink(ctx context.Context, cpus, memMiB int) {
	if info, err := v.inst.Info(ctx); err != nil {
		log.G(ctx).WithError(err).Info("vCPUs kept: the guest did not say how many it has online")
	} else if cpus < int(info.CpusOnline) {
		log.G(ctx).WithField("cpus", cpus).Info("giving vCPUs back")
		if err := v.inst.SetCPUs(ctx, cpus); err != nil {
			log.G(ctx).WithError(err).Info("the guest kept some of its vCPUs")
		}
	}
	if memMiB < v.inst.MemoryMiB() {
		if err := v.inst.SetMemory(ctx, memMiB); err != nil {
			log.G(ctx).WithError(err).Info("the guest kept some of its hot-plugged memory")
		}
	}
}
