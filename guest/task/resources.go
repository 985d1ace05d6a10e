package task

import (
	"context"
	"encoding/json"
	"fmt"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/qemu-shim/qemu-shim/api/wire"
)

// Pause freezes the container.
func (s *Service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*emptypb.Empty, error) {
	return s.setPaused(ctx, r.ID, true)
}

// Resume thaws it.
func (s *Service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	return s.setPaused(ctx, r.ID, false)
}

func (s *Service) setPaused(ctx context.Context, id string, pause bool) (*emptypb.Empty, error) {
	c, err := s.container(id)
	if err != nil {
		return nil, err
	}
	op := map[bool]string{true: "pause", false: "resume"}[pause]
	if st := c.init.getState(); st != procRunning {
		return nil, fmt.Errorf("cannot %s task in %s state: %w", op, st, errdefs.ErrFailedPrecondition)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.paused == pause {
		if pause {
			return nil, fmt.Errorf("cannot pause a paused container: %w", errdefs.ErrFailedPrecondition)
		}
		return nil, fmt.Errorf("cannot resume a running process: %w", errdefs.ErrFailedPrecondition)
	}
	if pause {
		err = s.runcFor(c).Pause(ctx, id)
	} else {
		err = s.runcFor(c).Resume(ctx, id)
	}
	if err != nil {
		return nil, runcError(c, op, err)
	}
	c.paused = pause
	if pause {
		s.publish(topicPaused, &eventstypes.TaskPaused{ContainerID: id})
	} else {
		s.publish(topicResumed, &eventstypes.TaskResumed{ContainerID: id})
	}
	return &emptypb.Empty{}, nil
}

// Update changes the container's resources (runc update).
func (s *Service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*emptypb.Empty, error) {
	c, err := s.container(r.ID)
	if err != nil {
		return nil, err
	}
	if c.init.getState() == procStopped {
		return nil, fmt.Errorf("cannot update a stopped container: %w", errdefs.ErrFailedPrecondition)
	}
	if r.Resources == nil || len(r.Resources.Value) > wire.MaxSpecSize {
		return nil, fmt.Errorf("update: missing or oversized resources: %w", errdefs.ErrInvalidArgument)
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(r.Resources.Value, &res); err != nil {
		return nil, fmt.Errorf("update: resources: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if err := s.runcFor(c).Update(ctx, r.ID, &res); err != nil {
		return nil, runcError(c, "update", err)
	}
	return &emptypb.Empty{}, nil
}

// Stats returns the container's cgroup v2 metrics, as containerd expects.
func (s *Service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	c, err := s.container(r.ID)
	if err != nil {
		return nil, err
	}
	if c.cgroup == nil {
		return nil, fmt.Errorf("container %s has no cgroup: %w", r.ID, errdefs.ErrNotFound)
	}
	m, err := c.cgroup.Stat()
	if err != nil {
		return nil, fmt.Errorf("read cgroup stats: %w", err)
	}
	a, err := typeurl.MarshalAnyToProto(m)
	if err != nil {
		return nil, err
	}
	return &taskAPI.StatsResponse{Stats: a}, nil
}
