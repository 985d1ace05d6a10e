package task

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/qemu-shim/qemu-shim/internal/timeline"
	"github.com/qemu-shim/qemu-shim/shim/bundle"
	"github.com/qemu-shim/qemu-shim/shim/config"
	"github.com/qemu-shim/qemu-shim/shim/sandbox"
	"github.com/qemu-shim/qemu-shim/shim/stdio"
)

// timeouts are the deadlines of calls to the guest, and of the wait for a
// process's output before its exit is reported anyway. A guest that does
// not answer in time is taken as hung. A create waits for its disks to
// appear in the guest and for runc; a kill's deadline is short, since a
// SIGKILL that is not answered ends the VM.
type timeouts struct{ call, create, kill, drain time.Duration }

var defaultTimeouts = timeouts{call: 30 * time.Second, create: 2 * time.Minute, kill: 10 * time.Second, drain: 10 * time.Second}

// Service is the task service of one shim: one VM, one or more containers.
type Service struct {
	ctx       context.Context
	publisher shim.Publisher
	shutdown  shutdown.Service
	boot      sandbox.Booter
	timeouts  timeouts

	// bootMu is held while the first container boots the VM: the others
	// wait for it.
	bootMu sync.Mutex
	// sizeMu orders the VM's resizes: each works out the target and
	// hot-plugs for it before the next.
	sizeMu    sync.Mutex
	streamSeq atomic.Int64

	// mu guards what follows, and is never held across a call to the VM
	// or the guest.
	mu         sync.Mutex
	sb         sandbox.Sandbox // nil before the first Create
	cfg        config.Config   // the configuration the VM booted with
	containers map[string]*container
	// relays order each container's events (see events.go).
	relays map[string]*relay
	// reported is closed per sandbox once watchSandbox has reported its
	// processes after its end.
	reported map[sandbox.Sandbox]chan struct{}
	// gone marks the sandboxes whose end watchSandbox has taken in.
	gone map[sandbox.Sandbox]bool
	// closing is set once Shutdown has decided to end the shim.
	closing bool
	// podSize is the pod's resources, from its sandbox: the VM never has
	// less while the pod lives.
	podSize config.Size
	// joinable says the VM is a pod's or a group's, which later
	// containers may join (see podOf); otherwise its first container is
	// its only one.
	joinable bool
}

var _ taskAPI.TTRPCTaskService = (*Service)(nil)

// New returns the service; the VM boots at the first Create.
func New(ctx context.Context, publisher shim.Publisher, sd shutdown.Service) (*Service, error) {
	s := newService(ctx, publisher, sd, sandbox.Boot)
	// The socket goes when the shim does. containerd records its address in
	// the bundle (our working directory) once the shim has started, so it
	// is read at the end.
	sd.RegisterCallback(func(context.Context) error {
		if address := bundle.ShimAddress("."); address != "" {
			return shim.RemoveSocket(address)
		}
		return nil
	})
	return s, nil
}

func newService(ctx context.Context, publisher shim.Publisher, sd shutdown.Service, boot sandbox.Booter) *Service {
	s := &Service{ctx: ctx, publisher: publisher, shutdown: sd, boot: boot, timeouts: defaultTimeouts,
		containers: map[string]*container{}, relays: map[string]*relay{}, gone: map[sandbox.Sandbox]bool{}}
	sd.RegisterCallback(func(ctx context.Context) error {
		if sb := s.sandbox(); sb != nil {
			s.stopSandbox(ctx, sb) // and unwires its network
		}
		return nil
	})
	return s
}

// toGRPC maps errdefs errors to status codes for containerd.
func toGRPC(err error) error { return errgrpc.ToGRPC(err) }

func (s *Service) sandbox() sandbox.Sandbox {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sb
}

// ended says whether the VM has ended (or never started).
func ended(sb sandbox.Sandbox) bool {
	if sb == nil {
		return true
	}
	select {
	case <-sb.Done():
		return true
	default:
		return false
	}
}

// unanswered says whether err means the guest did not answer, as opposed
// to answering with an error.
func unanswered(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ttrpc.ErrClosed) ||
		errdefs.IsUnavailable(err) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errdefs.IsUnavailable(errgrpc.ToNative(err))
}

// unansweredConsole is how much of the guest's console a call the guest
// did not answer logs.
const unansweredConsole = 12 << 10

// guestCall makes a call to the guest's task service with a deadline.
// The guest's errors come back as it sent them (gRPC status); a guest
// that does not answer in time is an error that says so.
func guestCall[Resp any](ctx context.Context, s *Service, sb sandbox.Sandbox, what string, timeout time.Duration, call func(context.Context, taskAPI.TTRPCTaskService) (*Resp, error)) (*Resp, error) {
	if ended(sb) {
		return nil, fmt.Errorf("%s: the VM has ended: %w", what, errdefs.ErrFailedPrecondition)
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	began := time.Now()
	a, err := sb.Tasks(cctx)
	if err != nil {
		return nil, fmt.Errorf("%s: reach the guest: %w", what, err)
	}
	resp, err := call(cctx, a)
	log.G(ctx).WithField("call", what).WithField("took", time.Since(began)).Debug("guest call")
	if err != nil && ctx.Err() == nil && cctx.Err() != nil {
		// The guest's task service logs what a call waits on halfway to
		// its deadline; the console has it.
		log.G(ctx).WithField("call", what).Warnf("the guest did not answer within %v; the end of its console:\n%s", timeout, sb.ConsoleTail(unansweredConsole))
		return nil, fmt.Errorf("%s: the guest did not answer within %v: %w", what, timeout, context.DeadlineExceeded)
	}
	return resp, err
}

// forward passes a call on to the guest as it is.
func forward[Resp any](ctx context.Context, s *Service, what string, call func(context.Context, taskAPI.TTRPCTaskService) (*Resp, error)) (*Resp, error) {
	resp, err := guestCall(ctx, s, s.sandbox(), what, s.timeouts.call, call)
	if err != nil {
		return nil, toGRPC(err)
	}
	return resp, nil
}

// lookup finds a created container's process.
func (s *Service) lookup(id, execID string) (*container, *proc, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok || !c.created {
		return nil, nil, fmt.Errorf("container %s: %w", id, errdefs.ErrNotFound)
	}
	p, ok := c.procs[execID]
	if !ok {
		return c, nil, fmt.Errorf("process %s in container %s: %w", execID, id, errdefs.ErrNotFound)
	}
	return c, p, nil
}

// Start starts a process.
func (s *Service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(err)
	}
	resp, err := forward(ctx, s, "start", func(ctx context.Context, a taskAPI.TTRPCTaskService) (*taskAPI.StartResponse, error) {
		return a.Start(ctx, r)
	})
	if err != nil {
		return nil, err
	}
	p.setStarted(resp.Pid)
	if r.ExecID == "" {
		c.hooks.Poststart(ctx)
	}
	return resp, nil
}

// Exec adds a process to a container.
func (s *Service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*emptypb.Empty, error) {
	c, _, err := s.lookup(r.ID, "")
	if err != nil {
		return nil, toGRPC(err)
	}
	s.mu.Lock()
	_, dup := c.procs[r.ExecID]
	sb := s.sb
	s.mu.Unlock()
	if dup {
		return nil, toGRPC(fmt.Errorf("id %s: %w", r.ExecID, errdefs.ErrAlreadyExists))
	}
	if ended(sb) {
		return nil, toGRPC(fmt.Errorf("exec in container %s: the VM has ended: %w", r.ID, errdefs.ErrFailedPrecondition))
	}
	host := stdio.Stdio{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal}
	pio, guest, err := s.openIO(ctx, sb, r.ID, host)
	if err != nil {
		return nil, toGRPC(err)
	}
	req := &taskAPI.ExecProcessRequest{ID: r.ID, ExecID: r.ExecID, Terminal: r.Terminal, Spec: r.Spec,
		Stdin: guest.Stdin, Stdout: guest.Stdout, Stderr: guest.Stderr}
	if _, err := guestCall(ctx, s, sb, "exec", s.timeouts.call, func(ctx context.Context, a taskAPI.TTRPCTaskService) (*emptypb.Empty, error) {
		return a.Exec(ctx, req)
	}); err != nil {
		pio.Close()
		return nil, toGRPC(err)
	}
	p := newProc(pio, host)
	s.mu.Lock()
	c.procs[r.ExecID] = p
	gone := s.gone[sb]
	s.mu.Unlock()
	if gone { // the VM ended before the exec was known here: it never starts
		pio.Close()
		p.setExit(&eventstypes.TaskExit{ContainerID: r.ID, ID: r.ExecID})
	}
	return &emptypb.Empty{}, nil
}

// Kill signals a process. When the guest does not answer a SIGKILL of
// the VM's last running init, the VM is ended: its processes are reported
// killed, as they are.
func (s *Service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	_, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(err)
	}
	sb := s.sandbox()
	if ended(sb) {
		if sb != nil {
			<-s.vmReported(sb)
		}
		if p.exitStatus() != nil {
			return nil, toGRPC(fmt.Errorf("process %s of %s: process already finished: %w", r.ExecID, r.ID, errdefs.ErrNotFound))
		}
		return nil, toGRPC(fmt.Errorf("kill %s: the VM has ended: %w", r.ID, errdefs.ErrFailedPrecondition))
	}
	resp, err := guestCall(ctx, s, sb, "kill", s.timeouts.kill, func(ctx context.Context, a taskAPI.TTRPCTaskService) (*emptypb.Empty, error) {
		return a.Kill(ctx, r)
	})
	if err == nil || !unanswered(err) || r.Signal != uint32(syscall.SIGKILL) || r.ExecID != "" || !s.lastRunning(r.ID) {
		return resp, toGRPC(err)
	}
	log.G(ctx).WithError(err).WithField("container", r.ID).Warn("the guest did not answer a SIGKILL of the VM's last container: ending the VM")
	if err := sb.Kill(ctx); err != nil {
		log.G(ctx).WithError(err).Warn("end the VM")
	}
	<-s.vmReported(sb)
	return &emptypb.Empty{}, nil
}

// lastRunning says whether id's init is the only one of the VM's that has
// not exited.
func (s *Service) lastRunning(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for cid, c := range s.containers {
		if cid == id {
			continue
		}
		if p := c.procs[""]; p != nil && p.exitStatus() == nil {
			return false
		}
	}
	return true
}

// Wait returns once the process's exit has been reported (its output
// drained), like the runc shim.
func (s *Service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(err)
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	e := p.exitStatus()
	return &taskAPI.WaitResponse{ExitStatus: e.ExitStatus, ExitedAt: e.ExitedAt}, nil
}

// State reports a process, with the host's bundle and stdio. Once the VM
// has ended, its processes are stopped.
func (s *Service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(err)
	}
	// Answered here, as the runc shim answers from its own process states
	// without asking runc: the calls made through this shim (create,
	// exec, start, pause, resume) and the exits the guest reports say it
	// all, and containerd (and the kubelet, through CRI) asks often; the
	// guest, under TCG, would spend a round trip on each. A process whose
	// exit is not known yet is still running, as with the runc shim
	// before its reaper has seen the exit. An exec is named by its own
	// id, as the runc shim names it.
	resp := &taskAPI.StateResponse{ID: r.ID, ExecID: r.ExecID}
	if r.ExecID != "" {
		resp.ID = r.ExecID
	}
	status, pid := p.status()
	if r.ExecID == "" {
		pid = c.pid
	}
	if status == task.Status_RUNNING && c.paused.Load() {
		// Every process of a paused container, as with the runc shim.
		status = task.Status_PAUSED
	}
	resp.Status, resp.Pid = status, pid
	if e := p.exitStatus(); e != nil || ended(s.sandbox()) {
		resp.Status = task.Status_STOPPED
		if e != nil {
			resp.ExitStatus, resp.ExitedAt, resp.Pid = e.ExitStatus, e.ExitedAt, max(pid, e.Pid)
		}
	}
	resp.Bundle = c.bundle
	resp.Stdin, resp.Stdout, resp.Stderr, resp.Terminal = p.stdio.Stdin, p.stdio.Stdout, p.stdio.Stderr, p.stdio.Terminal
	return resp, nil
}

// Delete removes a process; for the init, the container and what the VM
// holds for it.
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	c, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(err)
	}
	sb := s.sandbox()
	tl := timeline.New()
	defer func() { tl.Log(ctx, "delete "+r.ID) }()
	var resp *taskAPI.DeleteResponse
	// The only container a VM will ever have, exited with nothing else
	// left: the VM ends with it (Shutdown follows), so the guest's cleanup
	// (the runtime's delete, unmounting the rootfs) would be work thrown
	// away. A pod's or a group's VM may get another container, which must
	// find the guest without this one.
	retiring := r.ExecID == "" && s.onlyExitedInit(c, p)
	if !ended(sb) && !retiring {
		resp, err = guestCall(ctx, s, sb, "delete", s.timeouts.call, func(ctx context.Context, a taskAPI.TTRPCTaskService) (*taskAPI.DeleteResponse, error) {
			return a.Delete(ctx, r)
		})
		if err != nil && !(unanswered(err) && ended(sb)) {
			return nil, toGRPC(err)
		}
	}
	if resp == nil {
		// The VM is gone (or going) and its processes with it: once their
		// exits are reported, nothing is left in the guest to delete, and
		// containerd hears of the delete from here, after the exit.
		if sb != nil && !retiring {
			<-s.vmReported(sb)
		}
		resp = &taskAPI.DeleteResponse{}
		if e := p.exitStatus(); e != nil {
			resp.Pid, resp.ExitStatus, resp.ExitedAt = e.Pid, e.ExitStatus, e.ExitedAt
		}
		if r.ExecID == "" {
			ev := &eventstypes.TaskDelete{ContainerID: r.ID, ID: r.ID, Pid: resp.Pid, ExitStatus: resp.ExitStatus, ExitedAt: resp.ExitedAt}
			s.enqueue(r.ID, func() { s.publisher.Publish(s.ctx, runtime.TaskDeleteEventTopic, ev) })
		}
	}
	tl.Step("guest-delete")
	p.io.Close()
	tl.Step("io")
	s.mu.Lock()
	delete(c.procs, r.ExecID)
	var rest []*proc
	last := false
	if r.ExecID == "" {
		for _, x := range c.procs {
			rest = append(rest, x)
		}
		delete(s.containers, r.ID)
		last = len(s.containers) == 0
	}
	s.mu.Unlock()
	if r.ExecID != "" {
		return resp, nil
	}
	for _, x := range rest {
		x.io.Close()
	}
	if sb != nil {
		sb.Release(ctx, c.id, last)
	}
	tl.Step("release")
	c.hooks.Poststop(ctx)
	tl.Step("poststop")
	os.Remove(filepath.Join(c.bundle, bundle.VMDirFile))
	if !last && !ended(sb) {
		s.sizeMu.Lock()
		s.shrink(ctx, sb) // the rest of the pod needs less
		s.sizeMu.Unlock()
	}
	return resp, nil
}

// onlyExitedInit says whether p is the exited init of c, the only
// container of a VM no other can join, with no exec left.
func (s *Service) onlyExitedInit(c *container, p *proc) bool {
	s.mu.Lock()
	only := !s.joinable && len(s.containers) == 1 && len(c.procs) == 1
	s.mu.Unlock()
	return only && p.exitStatus() != nil
}

// Pids lists a container's processes; none once the VM has ended.
func (s *Service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	if _, _, err := s.lookup(r.ID, ""); err != nil {
		return nil, toGRPC(err)
	}
	if ended(s.sandbox()) {
		return &taskAPI.PidsResponse{}, nil
	}
	return forward(ctx, s, "pids", func(ctx context.Context, a taskAPI.TTRPCTaskService) (*taskAPI.PidsResponse, error) {
		return a.Pids(ctx, r)
	})
}

// Pause freezes a container.
func (s *Service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*emptypb.Empty, error) {
	c, _, err := s.lookup(r.ID, "")
	if err != nil {
		return nil, toGRPC(err)
	}
	resp, err := forward(ctx, s, "pause", func(ctx context.Context, a taskAPI.TTRPCTaskService) (*emptypb.Empty, error) {
		return a.Pause(ctx, r)
	})
	if err == nil {
		c.paused.Store(true)
	}
	return resp, err
}

// Resume thaws it.
func (s *Service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	c, _, err := s.lookup(r.ID, "")
	if err != nil {
		return nil, toGRPC(err)
	}
	resp, err := forward(ctx, s, "resume", func(ctx context.Context, a taskAPI.TTRPCTaskService) (*emptypb.Empty, error) {
		return a.Resume(ctx, r)
	})
	if err == nil {
		c.paused.Store(false)
	}
	return resp, err
}

// Checkpoint is not supported.
func (s *Service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, toGRPC(fmt.Errorf("checkpoint of a VM container: %w", errdefs.ErrNotImplemented))
}

// ResizePty resizes a terminal.
func (s *Service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*emptypb.Empty, error) {
	if _, _, err := s.lookup(r.ID, r.ExecID); err != nil {
		return nil, toGRPC(err)
	}
	return forward(ctx, s, "resize pty", func(ctx context.Context, a taskAPI.TTRPCTaskService) (*emptypb.Empty, error) {
		return a.ResizePty(ctx, r)
	})
}

// CloseIO closes a process's stdin.
func (s *Service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*emptypb.Empty, error) {
	_, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(err)
	}
	if r.Stdin {
		p.io.CloseStdin()
	}
	return &emptypb.Empty{}, nil
}

// Stats returns the container's cgroup v2 metrics from the guest.
func (s *Service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	if _, _, err := s.lookup(r.ID, ""); err != nil {
		return nil, toGRPC(err)
	}
	return forward(ctx, s, "stats", func(ctx context.Context, a taskAPI.TTRPCTaskService) (*taskAPI.StatsResponse, error) {
		return a.Stats(ctx, r)
	})
}

// Connect reports the shim and the container's init.
func (s *Service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	resp := &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: "3"}
	if c, _, err := s.lookup(r.ID, ""); err == nil {
		resp.TaskPid = c.pid
	}
	return resp, nil
}

// Shutdown ends the shim (and its VM) once no container is left, not
// even one being created.
func (s *Service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	// bootMu: no Create takes the sandbox while it is being stopped (a
	// Create that comes after finds the shim shutting down and fails).
	s.bootMu.Lock()
	defer s.bootMu.Unlock()
	s.mu.Lock()
	n, sb := len(s.containers), s.sb
	if n == 0 {
		s.closing = true
	}
	s.mu.Unlock()
	if n > 0 {
		return &emptypb.Empty{}, nil
	}
	if sb != nil {
		s.stopSandbox(ctx, sb)
	}
	s.shutdown.Shutdown()
	return &emptypb.Empty{}, nil
}
