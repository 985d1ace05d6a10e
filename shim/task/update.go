package task

import (
	"context"
	"encoding/json"
	"fmt"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/qemu-shim/qemu-shim/shim/config"
)

// Update resizes the VM for the container's new limits (hot-plugging vCPUs
// and memory and waiting until the guest has them online), then changes the
// container's cgroup in the guest.
func (s *Service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*emptypb.Empty, error) {
	if _, _, err := s.lookup(r.ID, ""); err != nil {
		return nil, toGRPC(err)
	}
	if r.Resources == nil {
		return nil, toGRPC(fmt.Errorf("update without resources: %w", errdefs.ErrInvalidArgument))
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(r.Resources.Value, &res); err != nil {
		return nil, toGRPC(fmt.Errorf("update resources: %v: %w", err, errdefs.ErrInvalidArgument))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.containers[r.ID]
	old := c.size
	c.size = config.SizeOf(&res)
	// Grow before the cgroup may use more; shrink once it may not.
	if err := s.grow(ctx, config.Size{}); err != nil {
		c.size = old
		return nil, toGRPC(fmt.Errorf("update container %s: %w", r.ID, err))
	}
	resp, err := s.agent.Update(ctx, r)
	if err != nil {
		c.size = old
		return nil, err
	}
	s.shrink(ctx)
	return resp, nil
}

// target is what the VM needs for all its containers, plus one about to
// join: their CPU quotas and memory limits added up, on top of the
// configured base (config.VM.Fit). The error says when that is more than
// the configured maxima.
func (s *Service) target(joining config.Size) (cpus, memMiB int, err error) {
	total, n := joining, 0
	if joining != (config.Size{}) {
		n++
	}
	for _, c := range s.containers {
		total.CPUs += c.size.CPUs
		total.MemoryMiB += c.size.MemoryMiB
		n++
	}
	// The pod's own figure covers its containers' limits.
	total.CPUs, total.MemoryMiB = max(total.CPUs, s.podSize.CPUs), max(total.MemoryMiB, s.podSize.MemoryMiB)
	cpus, memMiB, err = s.cfg.VM.Fit(total)
	if err != nil && n > 1 {
		err = fmt.Errorf("the VM's containers together: %w", err)
	}
	return cpus, memMiB, err
}

// shrink gives back memory no container needs any more: the newest DIMMs
// while the rest still cover the target. The guest may refuse (memory in
// use): that is logged, not an error. vCPUs stay (the guest cannot give
// them back). Called with s.mu held.
func (s *Service) shrink(ctx context.Context) {
	_, mem, _ := s.target(config.Size{})
	if mem < s.vm.MemoryMiB() {
		if err := s.vm.SetMemory(ctx, mem); err != nil {
			log.G(ctx).WithError(err).Info("the guest kept some of its hot-plugged memory")
		}
	}
}

// grow hot-plugs what the containers (and one joining, if any) need beyond
// what the VM has: their CPU quotas and memory limits added up (the guest
// keeps its base memory for itself). Called with s.mu held.
func (s *Service) grow(ctx context.Context, joining config.Size) error {
	if s.vm == nil {
		return fmt.Errorf("no VM: %w", errdefs.ErrFailedPrecondition)
	}
	cpus, mem, err := s.target(joining)
	if err != nil {
		return err
	}
	info, err := s.vm.Info(ctx)
	if err != nil {
		return err
	}
	if cpus > int(info.CpusOnline) {
		if err := s.vm.SetCPUs(ctx, cpus); err != nil {
			return err
		}
	}
	if mem > s.vm.MemoryMiB() {
		log.G(ctx).WithField("memory_mib", mem).Info("hot-plugging memory")
		if err := s.vm.SetMemory(ctx, mem); err != nil {
			return err
		}
	}
	return nil
}
