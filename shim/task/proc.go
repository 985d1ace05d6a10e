package task

import (
	"sync"
	"sync/atomic"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/task"

	"github.com/qemu-shim/qemu-shim/shim/config"
	"github.com/qemu-shim/qemu-shim/shim/hooks"
	"github.com/qemu-shim/qemu-shim/shim/stdio"
)

// container is the host's view of a container of the VM. It is in the
// service's map from the start of its Create, so its ID is taken and its
// size counts while it is made; created says the guest has it.
type container struct {
	id, bundle string
	rootfs     []*types.Mount // as containerd gave them
	stdio      stdio.Stdio    // the init's, on the host
	created    bool
	// pid is the init's pid in the guest, as containerd is told it.
	pid uint32
	// hooks are the spec's OCI hooks that run on the host, if any.
	hooks *hooks.Container
	size  config.Size
	procs map[string]*proc
	// paused is set while the container is paused (Pause answered, Resume
	// not yet): its processes are then paused.
	paused atomic.Bool
}

// proc is the host's view of a process.
type proc struct {
	io    *stdio.IO
	stdio stdio.Stdio

	mu      sync.Mutex
	started bool
	// pid is an exec's pid in the guest once it has started (the init's
	// is the container's pid).
	pid    uint32
	exit   *eventstypes.TaskExit
	exited chan struct{}
}

func newProc(io *stdio.IO, s stdio.Stdio) *proc {
	return &proc{io: io, stdio: s, exited: make(chan struct{})}
}

// setExit records the process's exit once; it says whether this was the
// first.
func (p *proc) setExit(e *eventstypes.TaskExit) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exit != nil {
		return false
	}
	p.exit = e
	close(p.exited)
	return true
}

func (p *proc) exitStatus() *eventstypes.TaskExit {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exit
}

// setStarted records that the process started, with its pid.
func (p *proc) setStarted(pid uint32) {
	p.mu.Lock()
	p.started, p.pid = true, pid
	p.mu.Unlock()
}

// status is the process's state as the calls made through this shim left
// it, created or running (a stopped one has its exit recorded, a paused
// one's container is), and its pid as far as it is known.
func (p *proc) status() (task.Status, uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.started {
		return task.Status_CREATED, p.pid
	}
	return task.Status_RUNNING, p.pid
}

func (p *proc) isStarted() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.started
}
