package task

import (
	"context"
	"fmt"

	"github.com/containerd/console"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/emptypb"
)

// ResizePty resizes a process's terminal.
func (s *Service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*emptypb.Empty, error) {
	_, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if p.getState() == procStopped {
		return nil, fmt.Errorf("cannot resize a stopped container: %w", errdefs.ErrFailedPrecondition)
	}
	if p.io == nil {
		return &emptypb.Empty{}, nil
	}
	if r.Width > 0xffff || r.Height > 0xffff {
		return nil, fmt.Errorf("window %dx%d: %w", r.Width, r.Height, errdefs.ErrInvalidArgument)
	}
	if err := p.io.resize(console.WinSize{Width: uint16(r.Width), Height: uint16(r.Height)}); err != nil {
		return nil, fmt.Errorf("resize terminal: %w", err)
	}
	return &emptypb.Empty{}, nil
}

// CloseIO closes a process's stdin.
func (s *Service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*emptypb.Empty, error) {
	_, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.Stdin && p.io != nil {
		p.io.closeStdin()
	}
	return &emptypb.Empty{}, nil
}
