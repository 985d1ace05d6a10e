package task

import (
	"sync"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/api/types"

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
}

// proc is the host's view of a process.
type proc struct {
	io    *stdio.IO
	stdio stdio.Stdio

	mu      sync.Mutex
	started bool
	exit    *eventstypes.TaskExit
	exited  chan struct{}
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

func (p *proc) setStarted() {
	p.mu.Lock()
	p.started = true
	p.mu.Unlock()
}

func (p *proc) isStarted() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.started
}
