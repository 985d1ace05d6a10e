package vm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"

	agentapi "github.com/qemu-shim/qemu-shim/api/agent/v1"
	"github.com/qemu-shim/qemu-shim/internal/lease"
	"github.com/qemu-shim/qemu-shim/internal/mountutil"
	"github.com/qemu-shim/qemu-shim/internal/transport"
	"github.com/qemu-shim/qemu-shim/internal/transport/conn"
	"github.com/qemu-shim/qemu-shim/vm/cmdline"
	"github.com/qemu-shim/qemu-shim/vm/qmp"
)

// File names inside a VM's state directory.
const (
	qmpSocketName = "qmp.sock"
	// OperatorQMPSocketName is the QMP monitor left for operators' tools.
	OperatorQMPSocketName = "qmp-operator.sock"
	agentSocketName       = "agent.sock"
	// ConsoleLogName is the guest's console, kept while the VM runs and
	// bounded (see ConsoleLogMaxBytes).
	ConsoleLogName = "console.log"
)

// The descriptors QEMU inherits: the console's socket, then the boot NICs'
// taps in order.
const (
	consoleFD  = 3
	firstTapFD = 4
)

// Bounds of each shutdown step.
var (
	agentShutdownWait = 5 * time.Second
	powerdownWait     = 2 * time.Second
	sigtermWait       = 2 * time.Second
	sigkillWait       = 5 * time.Second
)

// Instance is one VM.
type Instance struct {
	cfg      Config
	state    stateMachine
	stateDir string

	accel       cmdline.Accel
	transport   transport.Kind
	confinement confinement
	link        agentLink

	proc      *process
	console   *console
	virtiofsd *process
	qmp       *qmp.Monitor
	host      transport.Host
	// agent is the agent's service over agentConn, dialled again when it
	// ends; tasks is the task service's connection (see TaskClient).
	agent     agentapi.AgentService
	agentConn redialer
	tasks     redialer

	hp hotplugState
	// resumed is set once a restored guest runs (see resumeRestored).
	resumed atomic.Bool
	// memory is the guest's RAM while a VM to be saved runs (see
	// hasMemoryFile); closed at cleanup.
	memory *os.File
	// memoryLoaded gives, once, how the loading of a restored VM's saved
	// memory ended: it runs while QEMU starts, and the state is loaded
	// only after it.
	memoryLoaded chan error

	cleanupOnce sync.Once
	cleanupDone chan struct{}
	stopping    chan struct{}
	stopOnce    sync.Once
}

// New checks cfg and returns an Instance in state New.
func New(cfg Config) (*Instance, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Instance{
		agentConn:   redialer{kind: conn.KindTTRPC, what: "agent"},
		tasks:       redialer{kind: conn.KindTask, what: "task service"},
		cfg:         cfg,
		stateDir:    filepath.Join(cfg.StateRoot, cfg.ID),
		cleanupDone: make(chan struct{}),
		stopping:    make(chan struct{}),
	}, nil
}

// ID returns the VM's name.
func (i *Instance) ID() string { return i.cfg.ID }

// State returns the current state.
func (i *Instance) State() State { return i.state.get() }

// StateDir is where the VM's sockets, pid file and console log live while
// it runs.
func (i *Instance) StateDir() string { return i.stateDir }

// Accel is the accelerator QEMU runs with.
func (i *Instance) Accel() cmdline.Accel { return i.accel }

// Transport is the host↔guest transport in use.
func (i *Instance) Transport() transport.Kind { return i.transport }

// Pid is QEMU's process id (0 before Start).
func (i *Instance) Pid() int {
	if i.proc == nil {
		return 0
	}
	return i.proc.pid()
}

// Done is closed once QEMU has exited and the VM's resources are removed,
// whether through Shutdown or because QEMU died.
func (i *Instance) Done() <-chan struct{} { return i.cleanupDone }

// ExitStatus says how QEMU ended, once Done is closed.
func (i *Instance) ExitStatus() string {
	if i.proc == nil {
		return ""
	}
	return i.proc.describe()
}

// Agent is the agent's VM-level service. Each call goes over the live
// connection, made again if the last one ended; once the VM is shut down
// or QEMU has exited, calls fail with errdefs.ErrUnavailable.
func (i *Instance) Agent() agentapi.AgentService { return i.agent }

// Client is the TTRPC client to the agent's VM-level services last
// dialled; it is closed once that connection ends (prefer Agent).
func (i *Instance) Client() *ttrpc.Client { return i.agentConn.current() }

// DialStream opens a named stdio stream to the agent; Create and Exec
// refer to it as conn.StreamPrefix + name.
func (i *Instance) DialStream(ctx context.Context, name string) (net.Conn, error) {
	if err := i.state.require(i.cfg.ID, "open a stream", StateRunning); err != nil {
		return nil, err
	}
	return i.dial(ctx, conn.KindStream, name)
}

func (i *Instance) dial(ctx context.Context, kind byte, name string) (net.Conn, error) {
	c, err := i.host.Dial(ctx)
	if err != nil {
		return nil, err
	}
	if err := conn.WriteHeader(c, kind, name); err != nil {
		c.Close()
		return nil, fmt.Errorf("vm %s: open stream %q: %w", i.cfg.ID, name, err)
	}
	return c, nil
}

// Start launches QEMU and returns once the agent answers. On failure
// nothing is left behind.
func (i *Instance) Start(ctx context.Context) (retErr error) {
	if err := i.state.transition(i.cfg.ID, "start", StateNew, StateStarting); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, i.cfg.BootTimeout)
	defer cancel()
	defer func() {
		if retErr != nil {
			i.stopOnce.Do(func() { close(i.stopping) })
			if err := i.state.transition(i.cfg.ID, "abandon start", StateStarting, StateShutdown); err != nil {
				log.G(ctx).WithError(err).Warn("failed start")
			}
			if i.proc != nil {
				i.proc.signal(syscall.SIGKILL)
				i.proc.waitExit(sigkillWait)
			}
			i.cleanup(context.WithoutCancel(ctx))
		}
	}()

	if err := i.prepareStateDir(ctx); err != nil {
		return err
	}
	if i.cfg.Share != nil {
		if err := i.cfg.Share.check(); err != nil {
			return fmt.Errorf("vm %s: %w", i.cfg.ID, err)
		}
		if err := i.startVirtiofsd(ctx); err != nil {
			return err
		}
	}
	// Everything the command line needs is chosen (and held) here, once.
	accel, kind := i.resolve()
	link, err := i.newAgentLink(kind)
	if err != nil {
		return err
	}
	conf, err := confine(i.cfg, true)
	if err != nil {
		link.release()
		conf.release()
		return fmt.Errorf("vm %s: %w", i.cfg.ID, err)
	}
	i.accel, i.transport, i.link, i.confinement = accel, kind, link, conf
	i.hp.init(i.cfg)
	m, err := i.machine(i.accel, i.link, i.confinement)
	if err != nil {
		return err
	}
	args, err := m.Args()
	if err != nil {
		return fmt.Errorf("vm %s: %w: %w", i.cfg.ID, err, errdefs.ErrInvalidArgument)
	}
	log.G(ctx).WithField("vm", i.cfg.ID).WithField("args", strings.Join(args, " ")).Debug("starting QEMU")
	taps, err := i.openTaps()
	if err != nil {
		return err
	}
	c, qemuConsole, err := newConsole(i.stateDir, i.cfg.ConsoleLogMaxBytes)
	if err != nil {
		for _, t := range taps {
			t.Close()
		}
		return fmt.Errorf("vm %s: %w", i.cfg.ID, err)
	}
	i.console = c
	go c.run()
	// The descriptors QEMU inherits, from 3 on (see consoleFD, firstTapFD),
	// then the guest's memory file and the state to restore.
	inherited := append([]*os.File{qemuConsole}, taps...)
	if i.cfg.hasMemoryFile() {
		mem, err := i.openMemory(ctx)
		if err != nil {
			for _, f := range inherited {
				f.Close()
			}
			return fmt.Errorf("vm %s: %w", i.cfg.ID, err)
		}
		inherited = append(inherited, mem)
		if i.cfg.ForTemplate {
			// Kept to be saved; QEMU has its own descriptor.
			if i.memory, err = dupFile(mem); err != nil {
				for _, f := range inherited {
					f.Close()
				}
				return fmt.Errorf("vm %s: %w", i.cfg.ID, err)
			}
		}
	}
	if i.cfg.Restore != "" {
		state, err := os.Open(filepath.Join(i.cfg.Restore, SavedStateName))
		if err != nil {
			for _, f := range inherited {
				f.Close()
			}
			return fmt.Errorf("vm %s: open the state to restore: %w: %w", i.cfg.ID, ErrRestore, err)
		}
		inherited = append(inherited, state)
	}
	var userLease *os.File
	if conf.user != nil {
		// QEMU holds its user ID's lease as long as it lives, even if the
		// shim dies first, so no other VM's QEMU gets the same ID.
		userLease = conf.user.File()
	}
	binary := i.cfg.QEMU
	if w := i.confinement.wrapper; len(w) > 0 {
		binary, args = w[0], append(append(w[1:len(w):len(w)], i.cfg.QEMU), args...)
	}
	qemuFiles := inherited
	if userLease != nil {
		qemuFiles = append(slices.Clip(inherited), userLease)
	}
	i.proc, err = startProcess(binary, args, qemuFiles)
	for _, f := range inherited {
		f.Close() // QEMU has its own copies
	}
	if err != nil {
		return fmt.Errorf("vm %s: %w", i.cfg.ID, err)
	}
	go i.watchExit()

	// Give up at once if QEMU dies while we wait for it.
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	go func() {
		select {
		case <-i.proc.exited:
			i.console.drained(consoleDrainWait)
			err := fmt.Errorf("QEMU exited during boot: %s%s", i.proc.describe(), i.consoleTail())
			if i.cfg.Restore != "" && !i.resumed.Load() {
				err = fmt.Errorf("%w: %w", ErrRestore, err)
			}
			stop(err)
		case <-ctx.Done():
		}
	}()
	wrap := func(step string, err error) error {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			err = cause
		}
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w after %v%s", err, i.cfg.BootTimeout, i.consoleTail())
		}
		if i.cfg.Restore != "" && !i.resumed.Load() && !errors.Is(err, ErrRestore) && i.proc.waitExit(time.Second) {
			// QEMU exits when it cannot load the state it restores.
			err = fmt.Errorf("%w: QEMU exited while loading it: %s: %w", ErrRestore, i.proc.describe(), err)
		}
		return fmt.Errorf("vm %s: %s: %w", i.cfg.ID, step, err)
	}

	// QMP and the agent's socket are connected at once: the guest says it
	// is ready only once, and a host that is not listening then waits for
	// the next ping.
	qmpDone := make(chan error, 1)
	go func() {
		var err error
		i.qmp, err = qmp.Connect(ctx, m.QMPSocket)
		if err == nil && i.cfg.Restore != "" {
			err = i.resumeRestored(ctx)
		}
		qmpDone <- err
	}()
	i.agentConn.mu.Lock()
	agentErr := i.connectAgent(ctx)
	i.agentConn.mu.Unlock()
	if err := <-qmpDone; err != nil {
		return wrap("connect QMP", err)
	}
	if agentErr != nil {
		return wrap("reach the guest agent", agentErr)
	}
	// A restored guest's first call is Restored: nothing may run in it
	// before it is reseeded. A booted one says what it runs.
	kernel := ""
	if i.cfg.Restore != "" {
		if err := i.adoptRestored(ctx); err != nil {
			return wrap("adopt the restored guest", err)
		}
	} else {
		info, err := i.agent.Info(ctx, &agentapi.InfoRequest{})
		if err != nil {
			return wrap("agent info", err)
		}
		kernel = info.KernelRelease
	}
	if err := i.state.transition(i.cfg.ID, "finish start", StateStarting, StateRunning); err != nil {
		return err
	}
	log.G(ctx).WithField("vm", i.cfg.ID).WithField("accel", i.accel).WithField("transport", i.transport).
		WithField("kernel", kernel).WithField("restored", i.cfg.Restore != "").Info("VM running")
	return nil
}

func (i *Instance) prepareStateDir(ctx context.Context) error {
	if err := os.MkdirAll(i.cfg.StateRoot, 0o711); err != nil {
		return fmt.Errorf("vm %s: create state root: %w", i.cfg.ID, err)
	}
	// A directory left by a crashed owner may still have its QEMU.
	if pid, err := KillStale(i.stateDir); err != nil {
		return fmt.Errorf("vm %s: %w", i.cfg.ID, err)
	} else if pid != 0 {
		log.G(ctx).WithField("vm", i.cfg.ID).WithField("pid", pid).Warn("killed a stale QEMU left by an earlier shim")
	}
	if err := mountutil.RemoveAll(i.stateDir); err != nil {
		return fmt.Errorf("vm %s: clear state directory: %w", i.cfg.ID, err)
	}
	if err := os.Mkdir(i.stateDir, 0o700); err != nil {
		return fmt.Errorf("vm %s: create state directory: %w", i.cfg.ID, err)
	}
	return nil
}

// resolve picks the accelerator and the transport the configuration asks
// for ("auto" is decided by what the host has), logging why.
func (i *Instance) resolve() (cmdline.Accel, transport.Kind) {
	var accel cmdline.Accel
	switch i.cfg.Accel {
	case "kvm":
		accel = cmdline.KVM
	case "tcg":
		accel = cmdline.TCG
	default:
		var why string
		accel, why = DetectAccel()
		log.L.WithField("vm", i.cfg.ID).Info(why)
	}
	kind, why := transport.Resolve(i.cfg.Transport)
	log.L.WithField("vm", i.cfg.ID).WithField("transport", kind).Debug(why)
	return accel, kind
}

// machine turns the Config into a QEMU command line description, with the
// given accelerator and agent transport. It changes nothing.
func (i *Instance) machine(accel cmdline.Accel, link agentLink, conf confinement) (*cmdline.Machine, error) {
	kernel := cmdline.NewKernel(cmdline.DefaultKernelParams...)
	kernel.Set("qemu_shim.transport", string(link.kind()))
	if i.cfg.Debug {
		kernel.Set("qemu_shim.debug", "1")
	}
	if err := kernel.Add(i.cfg.KernelParams...); err != nil {
		return nil, fmt.Errorf("vm %s: %w: %w", i.cfg.ID, err, errdefs.ErrInvalidArgument)
	}
	m := &cmdline.Machine{
		Accel:             accel,
		Firmware:          i.cfg.Firmware,
		CPUs:              i.cfg.CPUs,
		MaxCPUs:           i.cfg.MaxCPUs,
		MemoryMiB:         i.cfg.MemoryMiB,
		MaxMemoryMiB:      i.cfg.MaxMemoryMiB,
		MemorySlots:       i.cfg.MemorySlots,
		VirtioMemMiB:      i.cfg.VirtioMemMiB,
		TCGCacheMiB:       i.cfg.TCGCacheMiB,
		Kernel:            i.cfg.Kernel,
		Initrd:            i.cfg.Initrd,
		KernelCmdline:     kernel.String(),
		ConsoleFD:         consoleFD,
		QMPSocket:         filepath.Join(i.stateDir, qmpSocketName),
		OperatorQMPSocket: filepath.Join(i.stateDir, OperatorQMPSocketName),
		PidFile:           filepath.Join(i.stateDir, PidFileName),
		HotplugPorts:      i.cfg.HotplugPorts,
		SCSIController:    true,
		SharedMemory:      i.cfg.Share != nil || i.cfg.SharedMemory,
		Sandbox:           conf.seccomp,
		RunAs:             conf.runAs(),
	}
	if m.RunAs != "" {
		m.Chroot = conf.chroot
	}
	if i.cfg.Tools != "" {
		m.Disks = append(m.Disks, cmdline.Disk{ID: agentapi.ToolsDiskSerial, Serial: agentapi.ToolsDiskSerial, Path: i.cfg.Tools, ReadOnly: true})
	}
	for n, nic := range i.cfg.NICs {
		// The taps follow the console in QEMU's descriptors (see openTaps).
		m.NICs = append(m.NICs, cmdline.NIC{ID: nic.ID, FD: firstTapFD + n, MAC: nic.MAC})
	}
	for _, d := range i.cfg.Disks {
		m.Disks = append(m.Disks, cmdline.Disk{ID: d.ID, Serial: d.ID, Path: d.Path, Format: d.Format, ReadOnly: d.ReadOnly})
	}
	link.configure(m)
	if i.cfg.Share != nil && i.cfg.Restore == "" {
		// A restored VM gets its share plugged in (the template had none).
		m.VirtiofsSocket, m.VirtiofsTag = i.virtiofsdSocket(), ShareTag
	}
	// The memory file follows the console and the taps (see Start), then
	// the state file (incomingFD).
	if i.cfg.hasMemoryFile() {
		m.MemoryFD = firstTapFD + len(i.cfg.NICs)
	}
	m.IncomingDefer = i.cfg.Restore != ""
	return m, nil
}

// incomingFD is QEMU's descriptor of the state it restores (see Start).
func (i *Instance) incomingFD() int { return firstTapFD + len(i.cfg.NICs) + 1 }

// openTaps opens the boot NICs' taps, in order, for QEMU to inherit.
func (i *Instance) openTaps() ([]*os.File, error) {
	var taps []*os.File
	for _, n := range i.cfg.NICs {
		t, err := openTap(n.Tap)
		if err != nil {
			for _, o := range taps {
				o.Close()
			}
			return nil, fmt.Errorf("vm %s: nic %s: %w", i.cfg.ID, n.ID, err)
		}
		taps = append(taps, t)
	}
	return taps, nil
}

// CommandLine returns the QEMU arguments Start would use, without starting
// anything; for operators and benchmarks. The instance stays New; only the
// empty directory QEMU chroots into is made, if missing.
func (i *Instance) CommandLine() ([]string, error) {
	if err := i.state.require(i.cfg.ID, "show the command line", StateNew); err != nil {
		return nil, err
	}
	accel, kind := i.resolve()
	link, err := i.newAgentLink(kind)
	if err != nil {
		return nil, err
	}
	defer link.release()
	// Shown as Start would confine it where it can, with the first user ID;
	// the empty root is made, so that the command line runs as it is.
	conf, _ := confine(i.cfg, false)
	if conf.chroot != "" {
		if err := makeEmptyRoot(conf.chroot); err != nil {
			return nil, err
		}
		conf.user = &lease.Lease{N: i.cfg.QEMUUIDFirst}
	}
	m, err := i.machine(accel, link, conf)
	if err != nil {
		return nil, err
	}
	return m.Args()
}

// connectAgent brings up the transport and the agent's TTRPC client. The
// caller holds agentConn.mu.
func (i *Instance) connectAgent(ctx context.Context) error {
	h, err := i.link.connect(ctx)
	if err != nil {
		return err
	}
	i.host = h
	if _, err := i.agentConn.getLocked(ctx, i, i.checkAgent); err != nil {
		return err
	}
	i.agent = agentProxy{i}
	return nil
}

// Reconnect drops the connection to the agent and makes a new one, as a
// restarted shim would. The old Client must no longer be used.
func (i *Instance) Reconnect(ctx context.Context) error {
	if err := i.state.require(i.cfg.ID, "reconnect", StateRunning); err != nil {
		return err
	}
	// Both connections are dialled on i.host: hold them off until the new
	// one is up.
	i.tasks.mu.Lock()
	defer i.tasks.mu.Unlock()
	i.agentConn.mu.Lock()
	defer i.agentConn.mu.Unlock()
	i.tasks.closeLocked()
	i.agentConn.closeLocked()
	i.host.Close()
	if err := i.connectAgent(ctx); err != nil {
		return fmt.Errorf("vm %s: reconnect: %w", i.cfg.ID, err)
	}
	return nil
}
