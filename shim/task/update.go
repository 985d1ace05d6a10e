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

	"github.com/qemu-shim/qemu-shim/internal/transport"
	"github.com/qemu-shim/qemu-shim/shim/config"
)

func transportKind(s string) transport.Kind { return transport.Kind(s) }

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
	err := s.grow(ctx, config.SizeOf(&res))
	a := s.agent
	s.mu.Unlock()
	if err != nil {
		return nil, toGRPC(err)
	}
	return a.Update(ctx, r)
}

// grow hot-plugs what a container's size needs beyond what the VM has.
// Called with s.mu held.
func (s *Service) grow(ctx context.Context, size config.Size) error {
	if s.vm == nil {
		return fmt.Errorf("no VM: %w", errdefs.ErrFailedPrecondition)
	}
	info, err := s.vm.Info(ctx)
	if err != nil {
		return err
	}
	if size.CPUs > int(info.CpusOnline) {
		if size.CPUs > s.vm.MaxCPUs() {
			return fmt.Errorf("%d vCPUs asked, the VM can have at most %d (vm.max_cpus): %w", size.CPUs, s.vm.MaxCPUs(), errdefs.ErrInvalidArgument)
		}
		if err := s.vm.SetCPUs(ctx, size.CPUs); err != nil {
			return err
		}
	}
	if size.MemoryMiB > 0 {
		// The guest keeps its base memory for itself; a container's limit
		// is on top of it.
		want := s.cfg.VM.MemoryMiB + size.MemoryMiB
		have := s.vm.MemoryMiB()
		if want > have {
			add := (want - have + 127) / 128 * 128
			log.G(ctx).WithField("add_mib", add).Info("hot-plugging memory")
			if err := s.vm.AddMemory(ctx, add); err != nil {
				return err
			}
		}
	}
	return nil
}
