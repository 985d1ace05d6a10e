package vm

import (
	"fmt"
	"sync/atomic"

	"github.com/containerd/errdefs"
)

// State is where an Instance is in its life.
type State int32

const (
	// StateNew: configured, not started.
	StateNew State = iota
	// StateStarting: QEMU launched, waiting for the agent.
	StateStarting
	// StateRunning: the agent answers; hot-plug and the agent's API may be used.
	StateRunning
	// StateShutdown: QEMU is gone (or going) and everything is being removed.
	// No way out.
	StateShutdown
)

func (s State) String() string {
	switch s {
	case StateNew:
		return "new"
	case StateStarting:
		return "starting"
	case StateRunning:
		return "running"
	case StateShutdown:
		return "shutdown"
	}
	return fmt.Sprintf("state(%d)", int32(s))
}

type stateMachine struct{ v atomic.Int32 }

func (m *stateMachine) get() State { return State(m.v.Load()) }

// transition moves from one state to another atomically; anything else is
// an error naming what was attempted.
func (m *stateMachine) transition(id, op string, from, to State) error {
	if m.v.CompareAndSwap(int32(from), int32(to)) {
		return nil
	}
	return fmt.Errorf("vm %s: cannot %s while %s: %w", id, op, m.get(), errdefs.ErrFailedPrecondition)
}

// require checks the current state for an operation that does not change it.
func (m *stateMachine) require(id, op string, want State) error {
	if s := m.get(); s != want {
		return fmt.Errorf("vm %s: cannot %s while %s: %w", id, op, s, errdefs.ErrFailedPrecondition)
	}
	return nil
}
