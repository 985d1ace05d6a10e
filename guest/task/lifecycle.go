package task

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3/cgroup2"
	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/typeurl/v2"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/qemu-shim/qemu-shim/guest/blockdev"
	"github.com/qemu-shim/qemu-shim/internal/timeline"
)

// Create makes a container: rootfs from the host's disks, the host's
// config.json adapted to the guest, then the OCI runtime's create.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	if !validID.MatchString(r.ID) {
		return nil, fmt.Errorf("container id %q: %w", r.ID, errdefs.ErrInvalidArgument)
	}
	if r.Checkpoint != "" {
		return nil, fmt.Errorf("restore from checkpoint: %w", errdefs.ErrNotImplemented)
	}
	tl := timeline.New()
	defer func() { tl.Log(ctx, "create "+r.ID) }()
	spec, err := decodeSpec(r.Options)
	if err != nil {
		return nil, err
	}
	tl.Step("spec")
	runtime, err := s.chooseRuntime(spec)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if _, ok := s.containers[r.ID]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("container %s: %w", r.ID, errdefs.ErrAlreadyExists)
	}
	c := &container{id: r.ID, bundle: filepath.Join(s.cfg.Root, r.ID), runtime: runtime, execs: map[string]*process{}}
	s.containers[r.ID] = c // reserve the id (see Service.container)
	s.mu.Unlock()
	defer func() {
		if retErr != nil {
			c.remove(ctx)
			s.mu.Lock()
			if s.containers[r.ID] == c {
				delete(s.containers, r.ID)
			}
			s.mu.Unlock()
		}
	}()

	if err := os.MkdirAll(c.bundle, 0o711); err != nil {
		return nil, err
	}
	began := time.Now()
	if c.mounts, err = mountRootfs(ctx, s.cfg.SysfsRoot, c.bundle, r.Rootfs); err != nil {
		return nil, err
	}
	debugTook(ctx, "rootfs mounted", began)
	tl.Step("rootfs")
	disk := func(serial string) (int64, int64, error) {
		d, err := blockdev.Wait(ctx, s.cfg.SysfsRoot, serial, deviceWait)
		return d.Major, d.Minor, err
	}
	if err := adaptSpec(ctx, r.ID, spec, adaptEnv{netns: s.cfg.NetworkNamespace, share: s.cfg.Share, isInit: s.isInit, disk: disk}); err != nil {
		return nil, err
	}
	config, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(c.bundle, "config.json"), config, 0o600); err != nil {
		return nil, err
	}
	tl.Step("config")

	names := stdio{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal}
	if spec.Process.Terminal != r.Terminal {
		return nil, fmt.Errorf("terminal %v but the spec's process.terminal is %v: %w", r.Terminal, spec.Process.Terminal, errdefs.ErrInvalidArgument)
	}
	pio, err := newProcIO(ctx, s.cfg.Streams, names, int(spec.Process.User.UID), int(spec.Process.User.GID))
	if err != nil {
		return nil, err
	}
	tl.Step("stdio")
	p := newProcess(c, "", names)
	p.io = pio
	pidFile := filepath.Join(c.bundle, "init.pid")
	handleStarted, cleanup := s.preStart()
	began = time.Now()
	if err := s.runcFor(c).Create(ctx, r.ID, c.bundle, &runc.CreateOpts{IO: pio.runcIO(), ConsoleSocket: pio.consoleSocket(), PidFile: pidFile}); err != nil {
		cleanup()
		pio.close()
		return nil, runcError(c, "create", err)
	}
	debugTook(ctx, "runtime create", began)
	tl.Step("runtime")
	pid, err := runc.ReadPidFile(pidFile)
	if err == nil {
		err = pio.start(ctx)
	}
	tl.Step("io")
	if err != nil {
		cleanup()
		s.runcFor(c).Delete(context.WithoutCancel(ctx), r.ID, &runc.DeleteOpts{Force: true})
		pio.close()
		return nil, err
	}
	if cg, err := cgroup2.Load(spec.Linux.CgroupsPath); err == nil {
		c.cgroup = cg
	}
	c.watchOOM(context.WithoutCancel(ctx), s.publish)
	tl.Step("cgroup")

	p.mu.Lock()
	p.pid = pid
	p.mu.Unlock()
	s.mu.Lock()
	c.init = p // other calls find the container from now on
	s.mu.Unlock()
	s.publish(topicCreate, &eventstypes.TaskCreate{
		ContainerID: r.ID, Bundle: r.Bundle, Rootfs: r.Rootfs, Pid: uint32(pid), Checkpoint: r.Checkpoint,
		IO: &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
	})
	handleStarted(p, pid)
	tl.Step("event")
	return &taskAPI.CreateTaskResponse{Pid: uint32(pid)}, nil
}

// Start starts the init (runc start) or an exec (runc exec --detach).
func (s *Service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if p.getState() != procCreated {
		return nil, p.stateError("start")
	}
	if r.ExecID == "" {
		began := time.Now()
		if err := s.runcFor(c).Start(ctx, r.ID); err != nil {
			return nil, runcError(c, "start", err)
		}
		debugTook(ctx, "runtime start", began)
		p.mu.Lock()
		if p.state == procCreated {
			p.state = procRunning
		}
		p.mu.Unlock()
		s.publish(topicStart, &eventstypes.TaskStart{ContainerID: r.ID, Pid: uint32(p.pid)})
		if s.started != nil {
			s.startedOnce.Do(func() { close(s.started) })
		}
		return &taskAPI.StartResponse{Pid: uint32(p.pid)}, nil
	}
	if c.init.getState() != procRunning {
		return nil, fmt.Errorf("cannot start an exec in a %s container: %w", c.init.getState(), errdefs.ErrFailedPrecondition)
	}
	handleStarted, cleanup := s.preStart()
	pid, err := s.startExec(ctx, c, p)
	if err != nil {
		cleanup()
		return nil, err
	}
	s.publish(topicExecStarted, &eventstypes.TaskExecStarted{ContainerID: r.ID, ExecID: r.ExecID, Pid: uint32(pid)})
	handleStarted(p, pid)
	return &taskAPI.StartResponse{Pid: uint32(pid)}, nil
}

// Kill signals a process, or with All every process of the container.
func (s *Service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	c, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.Signal == 0 || r.Signal > 64 {
		return nil, fmt.Errorf("signal %d: %w", r.Signal, errdefs.ErrInvalidArgument)
	}
	switch p.getState() {
	case procStopped:
		if !r.All {
			return nil, errProcessFinished
		}
	case procCreated:
		if r.ExecID != "" {
			return nil, p.stateError("kill")
		}
	}
	if r.ExecID == "" {
		if err := s.runcFor(c).Kill(ctx, r.ID, int(r.Signal), &runc.KillOpts{All: r.All}); err != nil {
			if p.getState() == procStopped || strings.Contains(err.Error(), "not running") {
				return nil, errProcessFinished
			}
			return nil, runcError(c, "kill", err)
		}
		return &emptypb.Empty{}, nil
	}
	if err := unix.Kill(p.pid, unix.Signal(r.Signal)); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, errProcessFinished
		}
		return nil, fmt.Errorf("signal exec %s: %w", r.ExecID, err)
	}
	return &emptypb.Empty{}, nil
}

// Wait returns once the process has exited (and its output drained).
func (s *Service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return &taskAPI.WaitResponse{ExitStatus: p.exitStatus, ExitedAt: timestamppb.New(p.exitedAt)}, nil
}

// State reports a process.
func (s *Service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	status := p.status()
	p.mu.Lock()
	defer p.mu.Unlock()
	resp := &taskAPI.StateResponse{
		ID: p.id(), Bundle: c.bundle, Pid: uint32(p.pid), Status: status,
		Stdin: p.names.stdin, Stdout: p.names.stdout, Stderr: p.names.stderr, Terminal: p.names.terminal,
		ExecID: p.execID,
	}
	if status == task.Status_STOPPED {
		resp.ExitStatus = p.exitStatus
		resp.ExitedAt = timestamppb.New(p.exitedAt)
	}
	return resp, nil
}

// Delete removes a stopped exec, or the container once its init stopped
// (or never started).
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	c, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.ExecID != "" {
		if p.getState() == procRunning {
			return nil, p.stateError("delete")
		}
		c.mu.Lock()
		delete(c.execs, r.ExecID)
		c.mu.Unlock()
		if p.io != nil {
			p.io.close()
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		return &taskAPI.DeleteResponse{Pid: uint32(p.pid), ExitStatus: p.exitStatus, ExitedAt: timestamppb.New(p.exitedAt)}, nil
	}
	switch p.getState() {
	case procRunning:
		return nil, p.stateError("delete")
	case procCreated:
		// Never started: runc kills it; the exit comes through the loop.
		if err := s.runcFor(c).Delete(ctx, r.ID, &runc.DeleteOpts{Force: true}); err != nil {
			return nil, runcError(c, "delete", err)
		}
		select {
		case <-p.exited:
		case <-time.After(drainWait):
			p.setExited(128+int(unix.SIGKILL), time.Now())
		}
	default:
		began := time.Now()
		if err := s.runcFor(c).Delete(ctx, r.ID, &runc.DeleteOpts{}); err != nil && !strings.Contains(err.Error(), "does not exist") {
			return nil, runcError(c, "delete", err)
		}
		debugTook(ctx, "runtime delete", began)
	}
	if p.io != nil {
		p.io.close()
	}
	s.dropVolumes(ctx, c.id)
	if err := c.remove(ctx); err != nil {
		return nil, err
	}
	s.mu.Lock()
	delete(s.containers, r.ID)
	s.mu.Unlock()
	p.mu.Lock()
	resp := &taskAPI.DeleteResponse{Pid: uint32(p.pid), ExitStatus: p.exitStatus, ExitedAt: timestamppb.New(p.exitedAt)}
	p.mu.Unlock()
	s.publish(topicDelete, &eventstypes.TaskDelete{ContainerID: r.ID, Pid: resp.Pid, ExitStatus: resp.ExitStatus, ExitedAt: resp.ExitedAt, ID: r.ID})
	return resp, nil
}

// Pids lists the container's processes, naming the execs.
func (s *Service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	c, err := s.container(r.ID)
	if err != nil {
		return nil, err
	}
	pids, err := s.runcFor(c).Ps(ctx, r.ID)
	if err != nil {
		return nil, runcError(c, "ps", err)
	}
	execs := map[int]string{}
	c.mu.Lock()
	for id, p := range c.execs {
		execs[p.pid] = id
	}
	c.mu.Unlock()
	resp := &taskAPI.PidsResponse{}
	for _, pid := range pids {
		info := &task.ProcessInfo{Pid: uint32(pid)}
		if id, ok := execs[pid]; ok {
			if a, err := typeurl.MarshalAnyToProto(&options.ProcessDetails{ExecID: id}); err == nil {
				info.Info = a
			}
		}
		resp.Processes = append(resp.Processes, info)
	}
	return resp, nil
}
