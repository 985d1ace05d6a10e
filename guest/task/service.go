package task

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sync"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"
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
	// Runtimes are the OCI runtimes containers run under, by name
	// (wire.RuntimeRunc, wire.RuntimeCrun): runc-compatible binaries.
	Runtimes map[string]string
	// DefaultRuntime runs the containers whose spec names no runtime.
	DefaultRuntime string
	// Root holds the containers' bundles, and each runtime's state.
	Root      string
	SysfsRoot string
	Streams   StreamSource
	Events    *EventLog
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
	cfg      Config
	runtimes map[string]*runc.Runc

	mu         sync.Mutex
	containers map[string]*container
	// running holds the started processes whose exits are awaited, by
	// pid; exitSubscribers collect the exits reaped while a process is
	// being started, before its pid is known (see preStart).
	running         map[int][]*process
	exitSubscribers map[*map[int][]runc.Exit]struct{}

	// volumes are the operator's disks mounted in containers, by serial
	// (nil while one is being mounted).
	volMu   sync.Mutex
	volumes map[string]*volume

	// started is closed when a container's init has first been started
	// (see Warm).
	started     chan struct{}
	startedOnce sync.Once
}

var _ taskAPI.TTRPCTaskService = (*Service)(nil)

// New starts the service and its exit loop. runc's own processes are
// reaped through reaper.Default, which the caller feeds from SIGCHLD.
func New(ctx context.Context, cfg Config) *Service {
	runc.Monitor = reaper.Default
	s := &Service{
		cfg:             cfg,
		runtimes:        map[string]*runc.Runc{},
		containers:      map[string]*container{},
		running:         map[int][]*process{},
		exitSubscribers: map[*map[int][]runc.Exit]struct{}{},
		volumes:         map[string]*volume{},
		started:         make(chan struct{}),
	}
	for name, bin := range cfg.Runtimes {
		// Each keeps its state apart: their formats differ.
		s.runtimes[name] = &runc.Runc{Command: bin, Root: filepath.Join(cfg.Root, "."+name), Log: filepath.Join(cfg.Root, "."+name+".log"), LogFormat: runc.JSON, PdeathSignal: unix.SIGKILL}
	}
	go s.exitLoop(ctx, reaper.Default.Subscribe())
	return s
}

func (s *Service) publish(topic string, event any) { s.cfg.Events.Publish(topic, event) }

func (s *Service) container(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok || c.init == nil { // (reserved by a create that has not got that far)
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

// Connect reports the agent and the container's init.
func (s *Service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	resp := &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: "3"}
	if c, err := s.container(r.ID); err == nil {
		c.init.mu.Lock()
		resp.TaskPid = uint32(c.init.pid)
		c.init.mu.Unlock()
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
