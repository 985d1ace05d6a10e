// Package taskv2 serves containerd's task API v2 (TTRPC service
// containerd.task.v2.Task, which containerd 1.6 and 1.7 speak) in front of
// a task API v3 service (containerd 2.x's, which the shim implements).
// The two APIs' messages are the same protobuf definitions in two
// packages (api/runtime/task/v2 and v3 differ in package name only), so
// each request and response is converted by marshalling it as one and
// unmarshalling it as the other.
package taskv2

import (
	"context"

	v2 "github.com/containerd/containerd/api/runtime/task/v2"
	v3 "github.com/containerd/containerd/api/runtime/task/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Service is the v2 task service over a v3 one.
type Service struct{ v3 v3.TTRPCTaskService }

var _ v2.TTRPCTaskService = (*Service)(nil)

// New returns the v2 task service that calls s.
func New(s v3.TTRPCTaskService) *Service { return &Service{v3: s} }

// convert copies from into to, field by field number.
func convert[T proto.Message](from proto.Message, to T) (T, error) {
	b, err := proto.Marshal(from)
	if err != nil {
		var zero T
		return zero, err
	}
	if err := proto.Unmarshal(b, to); err != nil {
		var zero T
		return zero, err
	}
	return to, nil
}

// call converts the request, calls the v3 method and converts its
// answer into out.
func call[In, In3, Out3, Out proto.Message](ctx context.Context, r In, in3 In3, method func(context.Context, In3) (Out3, error), out Out) (Out, error) {
	var zero Out
	req, err := convert(r, in3)
	if err != nil {
		return zero, err
	}
	resp, err := method(ctx, req)
	if err != nil {
		return zero, err
	}
	return convert(resp, out)
}

// callEmpty is call for the methods answering google.protobuf.Empty, the
// one type in both APIs.
func callEmpty[In, In3 proto.Message](ctx context.Context, r In, in3 In3, method func(context.Context, In3) (*emptypb.Empty, error)) (*emptypb.Empty, error) {
	req, err := convert(r, in3)
	if err != nil {
		return nil, err
	}
	return method(ctx, req)
}

func (s *Service) State(ctx context.Context, r *v2.StateRequest) (*v2.StateResponse, error) {
	return call(ctx, r, &v3.StateRequest{}, s.v3.State, &v2.StateResponse{})
}

func (s *Service) Create(ctx context.Context, r *v2.CreateTaskRequest) (*v2.CreateTaskResponse, error) {
	return call(ctx, r, &v3.CreateTaskRequest{}, s.v3.Create, &v2.CreateTaskResponse{})
}

func (s *Service) Start(ctx context.Context, r *v2.StartRequest) (*v2.StartResponse, error) {
	return call(ctx, r, &v3.StartRequest{}, s.v3.Start, &v2.StartResponse{})
}

func (s *Service) Delete(ctx context.Context, r *v2.DeleteRequest) (*v2.DeleteResponse, error) {
	return call(ctx, r, &v3.DeleteRequest{}, s.v3.Delete, &v2.DeleteResponse{})
}

func (s *Service) Pids(ctx context.Context, r *v2.PidsRequest) (*v2.PidsResponse, error) {
	return call(ctx, r, &v3.PidsRequest{}, s.v3.Pids, &v2.PidsResponse{})
}

func (s *Service) Pause(ctx context.Context, r *v2.PauseRequest) (*emptypb.Empty, error) {
	return callEmpty(ctx, r, &v3.PauseRequest{}, s.v3.Pause)
}

func (s *Service) Resume(ctx context.Context, r *v2.ResumeRequest) (*emptypb.Empty, error) {
	return callEmpty(ctx, r, &v3.ResumeRequest{}, s.v3.Resume)
}

func (s *Service) Checkpoint(ctx context.Context, r *v2.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return callEmpty(ctx, r, &v3.CheckpointTaskRequest{}, s.v3.Checkpoint)
}

func (s *Service) Kill(ctx context.Context, r *v2.KillRequest) (*emptypb.Empty, error) {
	return callEmpty(ctx, r, &v3.KillRequest{}, s.v3.Kill)
}

func (s *Service) Exec(ctx context.Context, r *v2.ExecProcessRequest) (*emptypb.Empty, error) {
	return callEmpty(ctx, r, &v3.ExecProcessRequest{}, s.v3.Exec)
}

func (s *Service) ResizePty(ctx context.Context, r *v2.ResizePtyRequest) (*emptypb.Empty, error) {
	return callEmpty(ctx, r, &v3.ResizePtyRequest{}, s.v3.ResizePty)
}

func (s *Service) CloseIO(ctx context.Context, r *v2.CloseIORequest) (*emptypb.Empty, error) {
	return callEmpty(ctx, r, &v3.CloseIORequest{}, s.v3.CloseIO)
}

func (s *Service) Update(ctx context.Context, r *v2.UpdateTaskRequest) (*emptypb.Empty, error) {
	return callEmpty(ctx, r, &v3.UpdateTaskRequest{}, s.v3.Update)
}

func (s *Service) Wait(ctx context.Context, r *v2.WaitRequest) (*v2.WaitResponse, error) {
	return call(ctx, r, &v3.WaitRequest{}, s.v3.Wait, &v2.WaitResponse{})
}

func (s *Service) Stats(ctx context.Context, r *v2.StatsRequest) (*v2.StatsResponse, error) {
	return call(ctx, r, &v3.StatsRequest{}, s.v3.Stats, &v2.StatsResponse{})
}

func (s *Service) Connect(ctx context.Context, r *v2.ConnectRequest) (*v2.ConnectResponse, error) {
	return call(ctx, r, &v3.ConnectRequest{}, s.v3.Connect, &v2.ConnectResponse{})
}

func (s *Service) Shutdown(ctx context.Context, r *v2.ShutdownRequest) (*emptypb.Empty, error) {
	return callEmpty(ctx, r, &v3.ShutdownRequest{}, s.v3.Shutdown)
}
