package task

import (
	"context"
	"encoding/json"
	"fmt"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/qemu-shim/qemu-shim/shim/config"
	"github.com/qemu-shim/qemu-shim/shim/sandbox"
)

// Update resizes the VM for the container's new limits (hot-plugging vCPUs
// and memory and waiting until the guest has them online), then changes the
// container's cgroup in the guest.
func (s *Service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*emptypb.Empty, error) {
	c, _, err := s.lookup(r.ID, "")
	if err != nil {
		return nil, toGRPC(err)
	}
	if r.Resources == nil {
		return nil, toGRPC(fmt.Errorf("update without resources: %w", errdefs.ErrInvalidArgument))
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(r.Resources.Value, &res); err != nil {
		return nil, toGRPC(fmt.Errorf("update resources: %v: %w", err, errdefs.ErrInvalidArgument))
	}
	sb := s.sandbox()
	if ended(sb) {
		return nil, toGRPC(fmt.Errorf("update container %s: the VM has ended: %w", r.ID, errdefs.ErrFailedPrecondition))
	}
	s.sizeMu.Lock()
	defer s.sizeMu.Unlock()
	s.mu.Lock()
	old := c.size
	c.size = config.SizeOf(&res)
	s.mu.Unlock()
	undo := func() {
		s.mu.Lock()
		c.size = old
		s.mu.Unlock()
	}
	// Grow before the cgroup may use more; shrink once it may not.
	if err := s.grow(ctx, sb); err != nil {
		undo()
		return nil, toGRPC(fmt.Errorf("update container %s: %w", r.ID, err))
	}
	resp, err := guestCall(ctx, s, sb, "update", s.timeouts.call, func(ctx context.Context, a taskAPI.TTRPCTaskService) (*emptypb.Empty, error) {
		return a.Update(ctx, r)
	})
	if err != nil {
		undo()
		return nil, toGRPC(err)
	}
	s.shrink(ctx, sb)
	return resp, nil
}

// target is what the VM needs for all its containers (those being created
// included), plus one about to join: their CPU quotas and memory limits
// added up, on top of the configured base (config.VM.Fit), and never less
// than the pod's own figure. The error says when that is more than the
// configured maxima.
func (s *Service) target(joining config.Size) (cpus, memMiB int, err error) {
	s.mu.Lock()
	total, n := joining, 0
	if joining != (config.Size{}) {
		n++
	}
	for _, c := range s.containers {
		total.CPUs += c.size.CPUs
		total.MemoryMiB += c.size.MemoryMiB
		n++
	}
	total.CPUs, total.MemoryMiB = max(total.CPUs, s.podSize.CPUs), max(total.MemoryMiB, s.podSize.MemoryMiB)
	cfg := s.cfg
	s.mu.Unlock()
	cpus, memMiB, err = cfg.VM.Fit(total)
	if err != nil && n > 1 {
		err = fmt.Errorf("the VM's containers together: %w", err)
	}
	return cpus, memMiB, err
}

// resize grows the VM for a container that joins it.
func (s *Service) resize(ctx context.Context, sb sandbox.Sandbox) error {
	s.sizeMu.Lock()
	defer s.sizeMu.Unlock()
	return s.grow(ctx, sb)
}

// grow hot-plugs what the containers need beyond what the VM has. Called
// with s.sizeMu held.
func (s *Service) grow(ctx context.Context, sb sandbox.Sandbox) error {
	cpus, mem, err := s.target(config.Size{})
	if err != nil {
		return err
	}
	return sb.Grow(ctx, cpus, mem)
}

// shrink gives back vCPUs and memory no container needs any more. Called
// with s.sizeMu held.
func (s *Service) shrink(ctx context.Context, sb sandbox.Sandbox) {
	cpus, mem, _ := s.target(config.Size{})
	sb.Shrink(ctx, cpus, mem)
}
