package task

import (
	"fmt"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// procState is where a process is in its life, as containerd's runc shim
// counts it.
type procState int

const (
	procCreated procState = iota
	procRunning
	procStopped
)

func (s procState) String() string {
	return [...]string{"created", "running", "stopped"}[s]
}

// process is a container's init (execID "") or one of its execs.
type process struct {
	c      *container
	execID string
	names  stdio
	spec   *specs.Process // execs only
	io     *procIO

	mu         sync.Mutex
	state      procState
	pid        int
	exitStatus uint32
	exitedAt   time.Time
	exited     chan struct{}
}

func newProcess(c *container, execID string, names stdio) *process {
	return &process{c: c, execID: execID, names: names, exited: make(chan struct{})}
}

// id is what containerd's events call the process: the container id for
// init, else the exec id.
func (p *process) id() string {
	if p.execID == "" {
		return p.c.id
	}
	return p.execID
}

func (p *process) getState() procState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// stateError says why an operation is refused in the current state, with
// the runc shim's wording.
func (p *process) stateError(op string) error {
	return fmt.Errorf("cannot %s a %s process: %w", op, p.getState(), errdefs.ErrFailedPrecondition)
}

func (p *process) status() task.Status {
	switch p.getState() {
	case procCreated:
		return task.Status_CREATED
	case procRunning:
		if p.c.isPaused() {
			return task.Status_PAUSED
		}
		return task.Status_RUNNING
	}
	return task.Status_STOPPED
}

// setExited records the exit; it returns false if it was already recorded.
func (p *process) setExited(status int, at time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == procStopped {
		return false
	}
	p.state = procStopped
	p.exitStatus = uint32(status)
	p.exitedAt = at
	close(p.exited)
	return true
}
