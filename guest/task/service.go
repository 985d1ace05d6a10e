package task

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/console"
	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/qemu-shim/qemu-shim/api/wire"
)

// containerd's event topics.
const (
	topicCreate      = "/tasks/create"
	topicStart       = "/tasks/start"
	topicExit        = "/tasks/exit"
	topicDelete      = "/tasks/delete"
	topicExecAdded   = "/tasks/exec-added"
	topicExecStarted = "/tasks/exec-started"
	topicPaused      = "/tasks/paused"
	topicResumed     = "/tasks/resumed"
	topicOOM         = "/tasks/oom"
)

var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// Config wires the service to the guest.
type Config struct {
	// Runc is the runc binary; Root holds the containers' bundles.
	Runc, Root string
	SysfsRoot  string
	Streams    StreamSource
	Events     *EventLog
	// NetworkNamespace returns the path of the VM's container network
	// namespace (made on first use). Nil leaves containers in the guest's
	// root namespace.
	NetworkNamespace func() (string, error)
	// Share returns where the host's share of files is mounted (mounting it
	// on first use); nil when the guest has none.
	Share func() (string, error)
}

// Service is the task service.
type Service struct {
	cfg  Config
	runc *runc.Runc

	mu         sync.Mutex
	containers map[string]*container
	byPid      map[int]*process
	// early holds exits of pids not (yet) known: a process may exit before
	// runc has told us its pid.
	early map[int]runc.Exit
}

var _ taskAPI.TTRPCTaskService = (*Service)(nil)

// New starts the service and its exit loop. runc's own processes are
// reaped through reaper.Default, which the caller feeds from SIGCHLD.
func New(ctx context.Context, cfg Config) *Service {
	runc.Monitor = reaper.Default
	s := &Service{
		cfg:        cfg,
		runc:       &runc.Runc{Command: cfg.Runc, Root: filepath.Join(cfg.Root, ".runc"), Log: filepath.Join(cfg.Root, ".runc.log"), LogFormat: runc.JSON, PdeathSignal: unix.SIGKILL},
		containers: map[string]*container{},
		byPid:      map[int]*process{},
		early:      map[int]runc.Exit{},
	}
	go s.exitLoop(ctx, reaper.Default.Subscribe())
	return s
}

func (s *Service) publish(topic string, event any) { s.cfg.Events.Publish(topic, event) }

func (s *Service) container(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, fmt.Errorf("container %s: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

func (s *Service) process(id, execID string) (*container, *process, error) {
	c, err := s.container(id)
	if err != nil {
		return nil, nil, err
	}
	if execID == "" {
		return c, c.init, nil
	}
	p, ok := c.exec(execID)
	if !ok {
		return c, nil, fmt.Errorf("exec %s in container %s: %w", execID, id, errdefs.ErrNotFound)
	}
	return c, p, nil
}

// runcFor returns the runc of one container: its log goes to the bundle,
// where runcError finds runc's own explanation of a failure.
func (s *Service) runcFor(c *container) *runc.Runc {
	r := *s.runc
	r.Log = filepath.Join(c.bundle, "log.json")
	return &r
}

// runcError adds the last error runc logged to its failure.
func runcError(c *container, op string, err error) error {
	if c != nil {
		if msg := lastRuncError(filepath.Join(c.bundle, "log.json")); msg != "" {
			return fmt.Errorf("runc %s: %s: %w", op, msg, err)
		}
	}
	return fmt.Errorf("runc %s: %w", op, err)
}

// lastRuncError reads the last error line of a runc JSON log (its last
// 64 KiB, the log being runc's, not trusted to be small).
func lastRuncError(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > 64<<10 {
		f.Seek(st.Size()-64<<10, 0)
	}
	b, _ := io.ReadAll(io.LimitReader(f, 64<<10))
	msg := ""
	for _, line := range strings.Split(string(b), "\n") {
		var entry struct{ Level, Msg string }
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Level == "error" {
			msg = entry.Msg
		}
	}
	return msg
}

// checkRunc says clearly when there is no runc to run containers with.
func (s *Service) checkRunc() error {
	if _, err := os.Stat(s.cfg.Runc); err != nil {
		return fmt.Errorf("runc is not in the guest (%v): is the tools disk attached?: %w", err, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// Create makes a container: rootfs from the host's disks, the host's
// config.json adapted to the guest, runc create.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	if !validID.MatchString(r.ID) {
		return nil, fmt.Errorf("container id %q: %w", r.ID, errdefs.ErrInvalidArgument)
	}
	if r.Checkpoint != "" {
		return nil, fmt.Errorf("restore from checkpoint: %w", errdefs.ErrNotImplemented)
	}
	spec, err := decodeSpec(r.Options)
	if err != nil {
		return nil, err
	}
	if err := s.checkRunc(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if _, ok := s.containers[r.ID]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("container %s: %w", r.ID, errdefs.ErrAlreadyExists)
	}
	c := &container{id: r.ID, bundle: filepath.Join(s.cfg.Root, r.ID), execs: map[string]*process{}}
	s.containers[r.ID] = c // reserve the id
	s.mu.Unlock()
	defer func() {
		if retErr != nil {
			c.remove(ctx)
			s.mu.Lock()
			delete(s.containers, r.ID)
			s.mu.Unlock()
		}
	}()

	if err := os.MkdirAll(c.bundle, 0o711); err != nil {
		return nil, err
	}
	if c.mounts, err = mountRootfs(ctx, s.cfg.SysfsRoot, c.bundle, r.Rootfs); err != nil {
		return nil, err
	}
	if err := adaptSpec(ctx, r.ID, spec, adaptEnv{netns: s.cfg.NetworkNamespace, share: s.cfg.Share, isInit: s.isInit}); err != nil {
		return nil, err
	}
	config, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(c.bundle, "config.json"), config, 0o600); err != nil {
		return nil, err
	}

	names := stdio{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal}
	if spec.Process.Terminal != r.Terminal {
		return nil, fmt.Errorf("terminal %v but the spec's process.terminal is %v: %w", r.Terminal, spec.Process.Terminal, errdefs.ErrInvalidArgument)
	}
	pio, err := newProcIO(ctx, s.cfg.Streams, names, int(spec.Process.User.UID), int(spec.Process.User.GID))
	if err != nil {
		return nil, err
	}
	p := newProcess(c, "", names)
	p.io = pio
	c.init = p
	pidFile := filepath.Join(c.bundle, "init.pid")
	if err := s.runcFor(c).Create(ctx, r.ID, c.bundle, &runc.CreateOpts{IO: pio.runcIO(), ConsoleSocket: pio.consoleSocket(), PidFile: pidFile}); err != nil {
		pio.close()
		return nil, runcError(c, "create", err)
	}
	pid, err := runc.ReadPidFile(pidFile)
	if err == nil {
		err = pio.start(ctx)
	}
	if err != nil {
		s.runcFor(c).Delete(context.WithoutCancel(ctx), r.ID, &runc.DeleteOpts{Force: true})
		pio.close()
		return nil, err
	}
	if cg, err := cgroup2.Load(spec.Linux.CgroupsPath); err == nil {
		c.cgroup = cg
	}
	c.watchOOM(context.WithoutCancel(ctx), s.publish)

	s.register(p, pid)
	s.publish(topicCreate, &eventstypes.TaskCreate{
		ContainerID: r.ID, Bundle: r.Bundle, Rootfs: r.Rootfs, Pid: uint32(pid), Checkpoint: r.Checkpoint,
		IO: &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
	})
	s.released(p)
	return &taskAPI.CreateTaskResponse{Pid: uint32(pid)}, nil
}

// register makes a pid known while its start event is not yet out.
func (s *Service) register(p *process, pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p.mu.Lock()
	p.pid = pid
	p.starting = true
	if e, ok := s.early[pid]; ok {
		p.pendingExit = &e
		delete(s.early, pid)
	}
	p.mu.Unlock()
	s.byPid[pid] = p
}

// released lets exits of p through, handling one that came meanwhile.
func (s *Service) released(p *process) {
	p.mu.Lock()
	p.starting = false
	e := p.pendingExit
	p.pendingExit = nil
	p.mu.Unlock()
	if e != nil {
		go s.handleExit(p, *e)
	}
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
		if err := s.runcFor(c).Start(ctx, r.ID); err != nil {
			return nil, runcError(c, "start", err)
		}
		p.mu.Lock()
		if p.state == procCreated {
			p.state = procRunning
		}
		p.mu.Unlock()
		s.publish(topicStart, &eventstypes.TaskStart{ContainerID: r.ID, Pid: uint32(p.pid)})
		return &taskAPI.StartResponse{Pid: uint32(p.pid)}, nil
	}
	if c.init.getState() != procRunning {
		return nil, fmt.Errorf("cannot start an exec in a %s container: %w", c.init.getState(), errdefs.ErrFailedPrecondition)
	}
	pid, err := s.startExec(ctx, c, p)
	if err != nil {
		return nil, err
	}
	s.publish(topicExecStarted, &eventstypes.TaskExecStarted{ContainerID: r.ID, ExecID: r.ExecID, Pid: uint32(pid)})
	s.released(p)
	return &taskAPI.StartResponse{Pid: uint32(pid)}, nil
}

func (s *Service) startExec(ctx context.Context, c *container, p *process) (int, error) {
	pio, err := newProcIO(ctx, s.cfg.Streams, p.names, int(p.spec.User.UID), int(p.spec.User.GID))
	if err != nil {
		return 0, err
	}
	pidFile := filepath.Join(c.bundle, "exec-"+p.execID+".pid")
	defer os.Remove(pidFile)
	opts := &runc.ExecOpts{IO: pio.runcIO(), ConsoleSocket: pio.consoleSocket(), PidFile: pidFile, Detach: true}
	if err := s.runcFor(c).Exec(ctx, c.id, *p.spec, opts); err != nil {
		pio.close()
		return 0, runcError(c, "exec", err)
	}
	pid, err := runc.ReadPidFile(pidFile)
	if err != nil {
		pio.close()
		return 0, err
	}
	p.io = pio
	p.mu.Lock()
	p.state = procRunning
	p.mu.Unlock()
	s.register(p, pid)
	if err := pio.start(ctx); err != nil {
		unix.Kill(pid, unix.SIGKILL)
		s.released(p)
		return 0, err
	}
	return pid, nil
}

// exitLoop matches every reaped exit to its process.
func (s *Service) exitLoop(ctx context.Context, exits chan runc.Exit) {
	for e := range exits {
		s.mu.Lock()
		p, ok := s.byPid[e.Pid]
		if !ok {
			// Perhaps runc has not told us the pid yet; keep it a while.
			s.early[e.Pid] = e
			for pid, old := range s.early {
				if time.Since(old.Timestamp) > time.Minute {
					delete(s.early, pid)
				}
			}
			s.mu.Unlock()
			continue
		}
		delete(s.byPid, e.Pid)
		p.mu.Lock()
		held := p.starting
		if held {
			e := e
			p.pendingExit = &e
		}
		p.mu.Unlock()
		s.mu.Unlock()
		if !held {
			go s.handleExit(p, e)
		}
	}
}

// handleExit reports an exit once the process's output is drained. The
// init's exit is always the container's last: its execs are ended and
// reported first.
func (s *Service) handleExit(p *process, e runc.Exit) {
	ctx := context.Background()
	if p.execID == "" {
		for _, x := range p.c.runningExecs() {
			// Without their own pid namespace, execs outlive init: end them.
			unix.Kill(x.pid, unix.SIGKILL)
		}
		for _, x := range p.c.runningExecs() {
			select {
			case <-x.exited:
			case <-time.After(drainWait):
				log.G(ctx).WithField("exec", x.execID).Warn("exec did not exit after its container's init")
			}
		}
	}
	if p.io != nil && !p.io.wait(drainWait) {
		log.G(ctx).WithField("container", p.c.id).WithField("exec", p.execID).Warn("output not drained: something still holds the process's stdout")
	}
	if !p.setExited(e.Status, e.Timestamp) {
		return
	}
	s.publish(topicExit, &eventstypes.TaskExit{
		ContainerID: p.c.id, ID: p.id(), Pid: uint32(e.Pid), ExitStatus: uint32(e.Status), ExitedAt: timestamppb.New(e.Timestamp),
	})
}

// Exec registers an exec process; Start runs it.
func (s *Service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*emptypb.Empty, error) {
	c, err := s.container(r.ID)
	if err != nil {
		return nil, err
	}
	if !validID.MatchString(r.ExecID) {
		return nil, fmt.Errorf("exec id %q: %w", r.ExecID, errdefs.ErrInvalidArgument)
	}
	if st := c.init.getState(); st != procRunning {
		return nil, fmt.Errorf("cannot exec in a %s state: %w", st, errdefs.ErrFailedPrecondition)
	}
	if r.Spec == nil || len(r.Spec.Value) > wire.MaxSpecSize {
		return nil, fmt.Errorf("exec %s: missing or oversized process spec: %w", r.ExecID, errdefs.ErrInvalidArgument)
	}
	var spec specs.Process
	if err := json.Unmarshal(r.Spec.Value, &spec); err != nil {
		return nil, fmt.Errorf("exec %s: process spec: %v: %w", r.ExecID, err, errdefs.ErrInvalidArgument)
	}
	if len(spec.Args) == 0 {
		return nil, fmt.Errorf("exec %s: no args: %w", r.ExecID, errdefs.ErrInvalidArgument)
	}
	spec.Terminal = r.Terminal
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.execs[r.ExecID]; ok {
		return nil, fmt.Errorf("id %s: %w", r.ExecID, errdefs.ErrAlreadyExists)
	}
	p := newProcess(c, r.ExecID, stdio{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal})
	p.spec = &spec
	c.execs[r.ExecID] = p
	s.publish(topicExecAdded, &eventstypes.TaskExecAdded{ContainerID: r.ID, ExecID: r.ExecID})
	return &emptypb.Empty{}, nil
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
		if err := s.runcFor(c).Delete(ctx, r.ID, &runc.DeleteOpts{}); err != nil && !strings.Contains(err.Error(), "does not exist") {
			return nil, runcError(c, "delete", err)
		}
	}
	if p.io != nil {
		p.io.close()
	}
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

// Connect reports the agent and the container's init.
func (s *Service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	resp := &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: "3"}
	if c, err := s.container(r.ID); err == nil {
		resp.TaskPid = uint32(c.init.pid)
	}
	return resp, nil
}

// Shutdown does nothing: the VM is shut down through the agent service.
func (s *Service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

// Checkpoint is not supported in a VM.
func (s *Service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, fmt.Errorf("checkpoint: %w", errdefs.ErrNotImplemented)
}

// isInit says whether pid is the init of one of the containers.
func (s *Service) isInit(pid int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.byPid[pid]
	return ok && p.execID == ""
}
