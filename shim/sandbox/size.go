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

// Shrink gives back memory no container needs any more: the newest DIMMs
// while the rest still cover memMiB. The guest may refuse (memory in use):
// that is logged, not an error. vCPUs stay (the guest cannot give them
// back).
func (v *VM) Shrink(ctx context.Context, memMiB int) {
	if memMiB < v.inst.MemoryMiB() {
		if err := v.inst.SetMemory(ctx, memMiB); err != nil {
			log.G(ctx).WithError(err).Info("the guest kept some of its hot-plugged memory")
		}
	}
}
