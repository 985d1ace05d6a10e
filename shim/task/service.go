package task

import (
	"context"
	"encoding/json"

	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsapi "github.com/qemu-shim/qemu-shim/api/events/v1"
	"github.com/qemu-shim/qemu-shim/api/wire"
	"github.com/qemu-shim/qemu-shim/internal/transport"
	"github.com/qemu-shim/qemu-shim/shim/bundle"
	"github.com/qemu-shim/qemu-shim/shim/config"
	"github.com/qemu-shim/qemu-shim/shim/hooks"
	"github.com/qemu-shim/qemu-shim/shim/rootfs"
	"github.com/qemu-shim/qemu-shim/shim/share"
	"github.com/qemu-shim/qemu-shim/shim/stdio"
	"github.com/qemu-shim/qemu-shim/vm"
)

// drainTimeout bounds the wait for a process's output before its exit is
// reported anyway.
const drainTimeout = 10 * time.Second

// Service is the task service of one shim: one VM, one or more containers.
type Service struct {
	ctx       context.Context
	publisher shim.Publisher
	shutdown  shutdown.Service

	mu         sync.Mutex
	vm         *vm.Instance
	agent      taskAPI.TTRPCTaskService
	cfg        config.Config
	containers map[string]*container
	layers     map[string]*sharedDisk // layer image path → disk
	diskSeq    int
	streamSeq  atomic.Int64
	lastEvent  uint64
	eventsDone chan struct{}
	// net is the container network namespace wired to the VM, if any.
	net *wiredNetwork
	// staging holds the containers' bind mounts for the guest; nil when
	// the VM has no share.
	staging *share.Staging
	// podSize is the pod's resources, from its sandbox: the VM never has
	// less while the pod lives.
	podSize config.Size
}

type sharedDisk struct {
	serial string
	refs   int
}

type container struct {
	id, bundle string
	// pid is the init's pid in the guest, as containerd is told it.
	pid uint32
	// shared is the container's entry in the staging directory, "" if none.
	shared string
	// hooks are the spec's OCI hooks that run on the host, if any.
	hooks  *hooks.Container
	size   config.Size
	owned  []ownedDisk
	layers []string // layer image paths it holds
	procs  map[string]*proc
}

type ownedDisk struct{ serial, path string }

// proc is the host's view of a process.
type proc struct {
	io     *stdio.IO
	stdio  stdio.Stdio
	mu     sync.Mutex
	exit   *eventstypes.TaskExit
	exited chan struct{}
}

func newProc(io *stdio.IO, s stdio.Stdio) *proc {
	return &proc{io: io, stdio: s, exited: make(chan struct{})}
}

var _ taskAPI.TTRPCTaskService = (*Service)(nil)

// New returns the service; the VM boots at the first Create.
func New(ctx context.Context, publisher shim.Publisher, sd shutdown.Service) (*Service, error) {
	s := &Service{ctx: ctx, publisher: publisher, shutdown: sd, containers: map[string]*container{}, layers: map[string]*sharedDisk{}}
	// The socket goes when the shim does. containerd records its address in
	// the bundle (our working directory) once the shim has started, so it
	// is read at the end.
	sd.RegisterCallback(func(context.Context) error {
		if address := bundle.ShimAddress("."); address != "" {
			return shim.RemoveSocket(address)
		}
		return nil
	})
	sd.RegisterCallback(func(ctx context.Context) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.stopVM(ctx) // and unwires its network
		return nil
	})
	return s, nil
}

// toGRPC maps errdefs errors to status codes for containerd.
func toGRPC(err error) error { return errgrpc.ToGRPC(err) }

// loadConfig finds the configuration: runtime options (ConfigPath) first,
// then the environment and the default file.
func loadConfig(opts any) (config.Config, error) {
	path := ""
	if o, ok := opts.(*runtimeoptions.Options); ok && o.ConfigPath != "" {
		path = o.ConfigPath
	}
	if env := os.Getenv(config.EnvPath); path == "" && env != "" {
		path = env
	}
	return config.Load(path)
}

// Create boots the VM if this is its first container, then makes the
// container in it.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	resp, err := s.create(ctx, r)
	return resp, toGRPC(err)
}

func (s *Service) create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	configJSON, spec, err := bundle.ReadSpec(r.Bundle)
	if err != nil {
		return nil, err
	}
	var opts any
	if r.Options != nil {
		if opts, err = typeurl.UnmarshalAny(r.Options); err != nil {
			log.G(ctx).WithError(err).Debug("runtime options not understood: ignored")
			opts = nil
		}
	}
	cfg, err := loadConfig(opts)
	if err != nil {
		return nil, err
	}
	if err := cfg.ApplyAnnotations(spec.Annotations); err != nil {
		return nil, err
	}
	if err := checkHostNamespaces(r.ID, spec); err != nil {
		return nil, err
	}
	var size config.Size
	if spec.Linux != nil {
		size = config.SizeOf(spec.Linux.Resources)
	}
	podSize, err := config.PodSizeOf(spec.Annotations)
	if err != nil {
		return nil, err
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.containers[r.ID]; ok {
		return nil, fmt.Errorf("container %s: %w", r.ID, errdefs.ErrAlreadyExists)
	}
	began := time.Now()
	bootedHere := false
	c := &container{id: r.ID, bundle: r.Bundle, size: size, procs: map[string]*proc{}}
	if s.vm == nil {
		// The share of host files is decided at boot, since the guest's
		// memory must be shared for it: a VM gets it when its first
		// container has bind mounts, or is a pod's (whose later
		// containers, as Kubernetes', bring theirs).
		withShare := share.Binds(spec.Mounts) > 0 || podOf(spec.Annotations)
		// A pod's VM is sized for the pod (its sandbox carries the sum of
		// its containers' limits), not for the pause container.
		s.podSize = podSize
		bootSize := config.Size{CPUs: max(size.CPUs, podSize.CPUs), MemoryMiB: max(size.MemoryMiB, podSize.MemoryMiB)}
		if err := s.boot(ctx, r.ID, cfg, bootSize, withShare); err != nil {
			return nil, err
		}
		bootedHere = true
	} else if err := s.grow(ctx, size); err != nil { // a pod's next container
		return nil, fmt.Errorf("container %s: %w", r.ID, err)
	}
	defer func() {
		if retErr != nil {
			s.releaseDisks(ctx, c)
			// Made by Convert even when a disk before it failed to attach.
			os.Remove(filepath.Join(r.Bundle, rootfs.UpperImageName))
			if bootedHere && len(s.containers) == 0 {
				s.stopVM(ctx)
			}
		}
	}()
	// Only the container that booted the VM names it for the cleanup after
	// a crash: the cleanup of a pod's later container (containerd's after
	// its failed create, too) must not end the pod's VM.
	if bootedHere {
		if err := os.WriteFile(filepath.Join(r.Bundle, bundle.VMDirFile), []byte(s.vm.StateDir()), 0o600); err != nil {
			return nil, err
		}
	}
	booted := time.Now()

	conv := &rootfs.Converter{LayerCache: s.cfg.Rootfs.LayerCache, UpperSizeMiB: s.cfg.Rootfs.UpperSizeMiB}
	disks, err := conv.Convert(ctx, r.Bundle, r.Rootfs)
	if err != nil {
		return nil, err
	}
	var guestRootfs []*types.Mount
	for _, d := range disks {
		serial, err := s.attach(ctx, c, d)
		if err != nil {
			return nil, err
		}
		m := &types.Mount{Type: d.Type, Source: wire.SerialPrefix + serial}
		if d.ReadOnly {
			m.Options = []string{"ro"}
		}
		guestRootfs = append(guestRootfs, m)
	}

	// The hooks (nerdctl's CNI setup) run before the wiring: what they make
	// in the namespace is what the VM is wired to.
	hh, netPath, err := hooks.RunCreate(ctx, r.ID, r.Bundle, spec, s.resolveNetns(spec))
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			hh.Poststop(ctx) // as runc's destroy of a failed create
		}
	}()
	c.hooks = hh
	if netPath != "" {
		if err := s.joinNetwork(ctx, c.id, netPath); err != nil {
			return nil, err
		}
	}

	// Bind mounts reach the guest through the share; the guest's spec
	// names their staged entries.
	if n := share.Binds(spec.Mounts); n > 0 {
		if s.staging == nil {
			return nil, fmt.Errorf("container %s has %d bind mounts, but its VM was started without a share of host files (its first container had none and is no pod's): %w", r.ID, n, errdefs.ErrFailedPrecondition)
		}
		mounts, entry, err := s.staging.Add(spec.Mounts)
		if err != nil {
			return nil, fmt.Errorf("container %s: %w", r.ID, err)
		}
		c.shared = entry
		spec.Mounts = mounts
		if configJSON, err = json.Marshal(spec); err != nil {
			return nil, err
		}
	}
	defer func() {
		if retErr != nil && c.shared != "" {
			s.staging.Remove(c.shared)
		}
	}()

	attached := time.Now()
	host := stdio.Stdio{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal}
	pio, guest, err := s.openIO(ctx, r.ID, host)
	if err != nil {
		return nil, err
	}
	p := newProc(pio, host)
	req := &taskAPI.CreateTaskRequest{
		ID: r.ID, Bundle: r.Bundle, Rootfs: guestRootfs, Terminal: r.Terminal,
		Stdin: guest.Stdin, Stdout: guest.Stdout, Stderr: guest.Stderr,
		Options: wire.SpecAny(configJSON),
	}
	resp, err := s.agent.Create(ctx, req)
	if err != nil {
		pio.Close()
		return nil, errgrpc.ToNative(err)
	}
	c.procs[""] = p
	c.pid = resp.Pid
	s.containers[r.ID] = c
	log.G(ctx).WithField("vm", booted.Sub(began)).WithField("disks", attached.Sub(booted)).
		WithField("guest", time.Since(attached)).Debug("container created")
	if log.GetLevel() < log.DebugLevel {
		return resp, nil
	}
	// Where the guest's boot time went, for whoever debugs start-up.
	if info, err := s.vm.Info(ctx); err == nil {
		var steps []string
		for _, st := range info.BootTimeline {
			steps = append(steps, fmt.Sprintf("%s@%.3f", st.Name, float64(st.AtNs)/1e9))
		}
		log.G(ctx).WithField("steps", strings.Join(steps, " ")).WithField("uptime", float64(info.UptimeNs)/1e9).Debug("guest timeline")
	}
	return resp, nil
}

func (s *Service) openIO(ctx context.Context, id string, host stdio.Stdio) (*stdio.IO, stdio.Stdio, error) {
	ns, _ := namespaces.Namespace(ctx)
	prefix := "s" + strconv.FormatInt(s.streamSeq.Add(1), 10)
	return stdio.Open(ctx, ns, id, host, prefix, s.vm.DialStream)
}

// boot starts the VM, sized for its first container and named after it
// (VMName).
func (s *Service) boot(ctx context.Context, id string, cfg config.Config, size config.Size, withShare bool) error {
	m, err := cfg.VM.Machine(size)
	if err != nil {
		return fmt.Errorf("container %s: %w", id, err)
	}
	ns, ok := namespaces.Namespace(ctx)
	if !ok {
		return fmt.Errorf("container %s: no namespace: %w", id, errdefs.ErrFailedPrecondition)
	}
	vcfg := vm.Config{
		ID:           bundle.VMName(ns, id),
		StateRoot:    cfg.VM.StateRoot,
		QEMU:         cfg.VM.QEMU,
		Kernel:       cfg.VM.Kernel,
		Initrd:       cfg.VM.Initrd,
		Tools:        cfg.VM.Tools,
		Accel:        cfg.VM.Accel,
		Transport:    transport.Kind(cfg.VM.Transport),
		CPUs:         m.CPUs,
		MaxCPUs:      m.MaxCPUs,
		MemoryMiB:    m.MemoryMiB,
		MaxMemoryMiB: m.MaxMemoryMiB,
		VirtioMemMiB: m.VirtioMemMiB,
		KernelParams: cfg.VM.KernelParams,
		BootTimeout:  cfg.VM.BootTimeout.Duration,
		Debug:        cfg.VM.Debug,
	}
	if withShare {
		vcfg.Share = &vm.Share{Virtiofsd: cfg.VM.Virtiofsd}
	}
	inst, err := vm.New(vcfg)
	if err != nil {
		return err
	}
	if err := inst.Start(ctx); err != nil {
		return err
	}
	client, err := inst.TaskClient(ctx)
	if err != nil {
		inst.Shutdown(context.WithoutCancel(ctx))
		return err
	}
	s.vm = inst
	s.cfg = cfg
	s.agent = taskAPI.NewTTRPCTaskClient(client)
	if dir := inst.ShareDir(); dir != "" {
		s.staging = &share.Staging{Dir: dir, Pid: inst.ShareNamespacePid()}
	}
	s.eventsDone = make(chan struct{})
	go s.forwardEvents(inst)
	go s.watchVM(inst)
	return nil
}

// attach hands a disk to the guest: layers once per VM, owned disks per
// container.
func (s *Service) attach(ctx context.Context, c *container, d rootfs.Disk) (string, error) {
	if !d.Owned {
		if l, ok := s.layers[d.Path]; ok {
			l.refs++
			c.layers = append(c.layers, d.Path)
			return l.serial, nil
		}
	}
	s.diskSeq++
	prefix := "u"
	if !d.Owned {
		prefix = "l"
	}
	serial := prefix + strconv.Itoa(s.diskSeq)
	if err := s.vm.AttachDisk(ctx, vm.Disk{ID: serial, Path: d.Path, ReadOnly: d.ReadOnly}); err != nil {
		if d.Owned {
			os.Remove(d.Path)
		}
		return "", err
	}
	if d.Owned {
		c.owned = append(c.owned, ownedDisk{serial: serial, path: d.Path})
	} else {
		s.layers[d.Path] = &sharedDisk{serial: serial, refs: 1}
		c.layers = append(c.layers, d.Path)
	}
	return serial, nil
}

// releaseDisks detaches a container's disks and the layers nobody else
// uses, and removes its writable image. Called with s.mu held.
func (s *Service) releaseDisks(ctx context.Context, c *container) {
	for _, d := range c.owned {
		if s.vm != nil && s.vm.State() == vm.StateRunning {
			if err := s.vm.DetachDisk(ctx, d.serial); err != nil {
				log.G(ctx).WithError(err).WithField("disk", d.serial).Warn("detach writable layer")
			}
		}
		os.Remove(d.path)
	}
	c.owned = nil
	for _, path := range c.layers {
		l := s.layers[path]
		if l == nil {
			continue
		}
		l.refs--
		if l.refs == 0 {
			delete(s.layers, path)
			if s.vm != nil && s.vm.State() == vm.StateRunning {
				if err := s.vm.DetachDisk(ctx, l.serial); err != nil {
					log.G(ctx).WithError(err).WithField("disk", l.serial).Warn("detach layer")
				}
			}
		}
	}
	c.layers = nil
}

// stopVM shuts the VM down. Called with s.mu held.
func (s *Service) stopVM(ctx context.Context) {
	if s.vm == nil {
		return
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := s.vm.Shutdown(sctx); err != nil {
		log.G(ctx).WithError(err).Warn("shut down VM")
	}
	if s.net != nil {
		s.unwire(sctx, s.net)
		s.net = nil
	}
	s.vm = nil
	s.agent = nil
	s.staging = nil // its entries went with the VM's state directory
}

func (s *Service) lookup(id, execID string) (*container, *proc, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, nil, fmt.Errorf("container %s: %w", id, errdefs.ErrNotFound)
	}
	p, ok := c.procs[execID]
	if !ok {
		return c, nil, fmt.Errorf("process %s in container %s: %w", execID, id, errdefs.ErrNotFound)
	}
	return c, p, nil
}

// vmRunning says whether the VM is up.
func (s *Service) vmRunning() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vm != nil && s.vm.State() == vm.StateRunning
}

func (s *Service) agentClient() (taskAPI.TTRPCTaskService, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.agent == nil {
		return nil, fmt.Errorf("no VM: %w", errdefs.ErrNotFound)
	}
	return s.agent, nil
}

// Start starts a process.
func (s *Service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, _, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(err)
	}
	resp, err := toAgent(s, func(a taskAPI.TTRPCTaskService) (*taskAPI.StartResponse, error) { return a.Start(ctx, r) })
	if err == nil && r.ExecID == "" {
		c.hooks.Poststart(ctx)
	}
	return resp, err
}

// Exec adds a process to a container.
func (s *Service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*emptypb.Empty, error) {
	c, _, err := s.lookup(r.ID, "")
	if err != nil {
		return nil, toGRPC(err)
	}
	s.mu.Lock()
	_, dup := c.procs[r.ExecID]
	s.mu.Unlock()
	if dup {
		return nil, toGRPC(fmt.Errorf("id %s: %w", r.ExecID, errdefs.ErrAlreadyExists))
	}
	a, err := s.agentClient()
	if err != nil {
		return nil, toGRPC(err)
	}
	host := stdio.Stdio{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal}
	pio, guest, err := s.openIO(ctx, r.ID, host)
	if err != nil {
		return nil, toGRPC(err)
	}
	req := &taskAPI.ExecProcessRequest{ID: r.ID, ExecID: r.ExecID, Terminal: r.Terminal, Spec: r.Spec,
		Stdin: guest.Stdin, Stdout: guest.Stdout, Stderr: guest.Stderr}
	if _, err := a.Exec(ctx, req); err != nil {
		pio.Close()
		return nil, err
	}
	s.mu.Lock()
	c.procs[r.ExecID] = newProc(pio, host)
	s.mu.Unlock()
	return &emptypb.Empty{}, nil
}

// Kill signals a process.
func (s *Service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	if _, _, err := s.lookup(r.ID, r.ExecID); err != nil {
		return nil, toGRPC(err)
	}
	return toAgent(s, func(a taskAPI.TTRPCTaskService) (*emptypb.Empty, error) { return a.Kill(ctx, r) })
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
	p.mu.Lock()
	defer p.mu.Unlock()
	return &taskAPI.WaitResponse{ExitStatus: p.exit.ExitStatus, ExitedAt: p.exit.ExitedAt}, nil
}

// State reports a process, with the host's bundle and stdio.
func (s *Service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(err)
	}
	a, err := s.agentClient()
	if err != nil {
		return nil, toGRPC(err)
	}
	resp, err := a.State(ctx, r)
	if err != nil {
		return nil, err
	}
	resp.Bundle = c.bundle
	resp.Stdin, resp.Stdout, resp.Stderr, resp.Terminal = p.stdio.Stdin, p.stdio.Stdout, p.stdio.Stderr, p.stdio.Terminal
	return resp, nil
}

// Delete removes a process; for the init, the container and its disks.
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	c, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(err)
	}
	var resp *taskAPI.DeleteResponse
	if s.vmRunning() {
		a, err := s.agentClient()
		if err != nil {
			return nil, toGRPC(err)
		}
		if resp, err = a.Delete(ctx, r); err != nil {
			return nil, err
		}
	} else {
		// The VM is gone and its processes with it (watchVM reported
		// their exits): there is nothing left in the guest to delete.
		p.mu.Lock()
		e := p.exit
		p.mu.Unlock()
		if e == nil {
			e = &eventstypes.TaskExit{ExitStatus: 137, ExitedAt: timestamppb.Now()}
		}
		resp = &taskAPI.DeleteResponse{Pid: e.Pid, ExitStatus: e.ExitStatus, ExitedAt: e.ExitedAt}
	}
	p.io.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(c.procs, r.ExecID)
	if r.ExecID == "" {
		for _, x := range c.procs {
			x.io.Close()
		}
		s.releaseDisks(ctx, c)
		if s.net != nil && s.net.owner == c.id && len(s.containers) == 1 {
			// The VM's last container: its cards go before the poststop
			// hooks (CNI DEL) take the namespace's interfaces away.
			s.unwire(ctx, s.net)
			s.net = nil
		}
		c.hooks.Poststop(ctx)
		if s.staging != nil {
			if err := s.staging.Remove(c.shared); err != nil {
				log.G(ctx).WithError(err).WithField("container", c.id).Warn("unstage bind mounts")
			}
		}
		os.Remove(filepath.Join(c.bundle, bundle.VMDirFile))
		delete(s.containers, r.ID)
		if len(s.containers) > 0 && s.vm != nil {
			s.shrink(ctx) // the rest of the pod needs less
		}
	}
	return resp, nil
}

// toAgent passes a call on to the guest as it is.
func toAgent[Resp any](s *Service, call func(taskAPI.TTRPCTaskService) (*Resp, error)) (*Resp, error) {
	a, err := s.agentClient()
	if err != nil {
		return nil, toGRPC(err)
	}
	return call(a)
}

// Pids lists a container's processes.
func (s *Service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	return toAgent(s, func(a taskAPI.TTRPCTaskService) (*taskAPI.PidsResponse, error) { return a.Pids(ctx, r) })
}

// Pause freezes a container.
func (s *Service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*emptypb.Empty, error) {
	return toAgent(s, func(a taskAPI.TTRPCTaskService) (*emptypb.Empty, error) { return a.Pause(ctx, r) })
}

// Resume thaws it.
func (s *Service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	return toAgent(s, func(a taskAPI.TTRPCTaskService) (*emptypb.Empty, error) { return a.Resume(ctx, r) })
}

// Checkpoint is not supported.
func (s *Service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, toGRPC(fmt.Errorf("checkpoint of a VM container: %w", errdefs.ErrNotImplemented))
}

// ResizePty resizes a terminal.
func (s *Service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*emptypb.Empty, error) {
	return toAgent(s, func(a taskAPI.TTRPCTaskService) (*emptypb.Empty, error) { return a.ResizePty(ctx, r) })
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
	return toAgent(s, func(a taskAPI.TTRPCTaskService) (*taskAPI.StatsResponse, error) { return a.Stats(ctx, r) })
}

// Connect reports the shim and the container's init.
func (s *Service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	resp := &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: "3"}
	if a, err := s.agentClient(); err == nil {
		if g, err := a.Connect(ctx, r); err == nil {
			resp.TaskPid = g.TaskPid
		}
	}
	return resp, nil
}

// Shutdown ends the shim (and its VM) once no container is left.
func (s *Service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	if len(s.containers) > 0 {
		s.mu.Unlock()
		return &emptypb.Empty{}, nil
	}
	s.stopVM(ctx)
	s.mu.Unlock()
	s.shutdown.Shutdown()
	return &emptypb.Empty{}, nil
}

// forwardEvents publishes the agent's events to containerd. An exit waits
// until the process's output is on containerd's side; the stream is
// resumed after the last event seen if it breaks.
func (s *Service) forwardEvents(inst *vm.Instance) {
	defer close(s.eventsDone)
	ctx := s.ctx
	for {
		s.mu.Lock()
		after := s.lastEvent
		s.mu.Unlock()
		sctx, cancel := context.WithCancel(ctx)
		var stream eventsapi.Events_StreamClient
		client, err := inst.TaskClient(sctx)
		if err == nil {
			stream, err = eventsapi.NewEventsClient(client).Stream(sctx, &eventsapi.StreamRequest{After: after})
		}
		if err == nil {
			for {
				e, rerr := stream.Recv()
				if rerr != nil {
					err = rerr
					break
				}
				s.forward(ctx, e)
			}
		}
		cancel()
		select {
		case <-inst.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
		log.G(ctx).WithError(err).Debug("agent event stream broke: resuming")
	}
}

func (s *Service) forward(ctx context.Context, e *eventsapi.Envelope) {
	s.mu.Lock()
	if e.Seq <= s.lastEvent {
		s.mu.Unlock()
		return
	}
	s.lastEvent = e.Seq
	s.mu.Unlock()
	v, err := typeurl.UnmarshalAny(e.Event)
	if err != nil {
		log.G(ctx).WithError(err).WithField("topic", e.Topic).Warn("undecodable event from the agent")
		return
	}
	// The guest is not trusted: only task events, under their own topics,
	// about containers of this shim, go on to containerd.
	if !taskEvent(e.Topic, v) {
		log.G(ctx).WithField("topic", e.Topic).WithField("type", fmt.Sprintf("%T", v)).Warn("unexpected event from the agent: dropped")
		return
	}
	if c, ok := v.(interface{ GetContainerID() string }); ok {
		s.mu.Lock()
		_, known := s.containers[c.GetContainerID()]
		s.mu.Unlock()
		if !known && e.Topic != "/tasks/delete" {
			log.G(ctx).WithField("topic", e.Topic).WithField("container", c.GetContainerID()).Warn("event about an unknown container: dropped")
			return
		}
	}
	if exit, ok := v.(*eventstypes.TaskExit); ok {
		execID := exit.ID
		if execID == exit.ContainerID {
			execID = ""
		}
		if _, p, err := s.lookup(exit.ContainerID, execID); err == nil {
			if !p.io.Wait(drainTimeout) {
				log.G(ctx).WithField("container", exit.ContainerID).Warn("output not drained before exit")
			}
			p.mu.Lock()
			if p.exit == nil {
				p.exit = exit
				close(p.exited)
			}
			p.mu.Unlock()
		}
	}
	if err := s.publisher.Publish(ctx, e.Topic, v); err != nil {
		log.G(ctx).WithError(err).WithField("topic", e.Topic).Warn("publish event")
	}
}

// taskEvent says whether v is the task event that topic names.
func taskEvent(topic string, v any) bool {
	switch v.(type) {
	case *eventstypes.TaskCreate:
		return topic == "/tasks/create"
	case *eventstypes.TaskStart:
		return topic == "/tasks/start"
	case *eventstypes.TaskExit:
		return topic == "/tasks/exit"
	case *eventstypes.TaskDelete:
		return topic == "/tasks/delete"
	case *eventstypes.TaskExecAdded:
		return topic == "/tasks/exec-added"
	case *eventstypes.TaskExecStarted:
		return topic == "/tasks/exec-started"
	case *eventstypes.TaskPaused:
		return topic == "/tasks/paused"
	case *eventstypes.TaskResumed:
		return topic == "/tasks/resumed"
	case *eventstypes.TaskOOM:
		return topic == "/tasks/oom"
	}
	return false
}

// watchVM reports every process as killed if the VM dies under them.
func (s *Service) watchVM(inst *vm.Instance) {
	<-inst.Done()
	s.mu.Lock()
	mine := s.vm == inst
	var orphans []*eventstypes.TaskExit
	var procs []*proc
	if mine {
		for _, c := range s.containers {
			for execID, p := range c.procs {
				p.mu.Lock()
				if p.exit == nil {
					id := c.id
					if execID != "" {
						id = execID
					}
					ev := &eventstypes.TaskExit{ContainerID: c.id, ID: id, ExitStatus: 137, ExitedAt: timestamppb.Now()}
					p.exit = ev
					close(p.exited)
					orphans = append(orphans, ev)
					procs = append(procs, p)
				}
				p.mu.Unlock()
			}
		}
	}
	s.mu.Unlock()
	if !mine {
		return
	}
	log.G(s.ctx).WithField("status", inst.ExitStatus()).Error("the VM ended under its containers")
	for _, ev := range orphans {
		s.publisher.Publish(s.ctx, "/tasks/exit", ev)
	}
	for _, p := range procs {
		p.io.Close()
	}
}

// podOf says whether a container belongs to a pod (or group) whose VM
// later containers join.
func podOf(annotations map[string]string) bool {
	for _, k := range config.GroupAnnotations {
		if annotations[k] != "" {
			return true
		}
	}
	return false
}

// checkHostNamespaces refuses a Kubernetes pod that asks for the node's
// network, PID or IPC namespace (hostNetwork, hostPID, hostIPC): in a VM
// they would be the guest's, which is not what the pod asked for. (Outside
// Kubernetes, a spec without a network namespace gets the guest's root
// one, with only lo: see the README.)
func checkHostNamespaces(id string, spec *specs.Spec) error {
	if spec.Annotations["io.kubernetes.cri.container-type"] != "sandbox" || spec.Linux == nil {
		return nil
	}
	for _, t := range []specs.LinuxNamespaceType{specs.NetworkNamespace, specs.PIDNamespace, specs.IPCNamespace} {
		found := false
		for _, ns := range spec.Linux.Namespaces {
			found = found || ns.Type == t
		}
		if !found {
			return fmt.Errorf("pod sandbox %s asks for the host's %s namespace (hostNetwork, hostPID or hostIPC): a pod in a VM cannot share the node's: %w", id, t, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}
