package vm

import (
	"context"
	"fmt"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/types/known/emptypb"

	agentapi "github.com/qemu-shim/qemu-shim/api/agent/v1"
)

// redialer keeps one TTRPC connection of a kind to the guest and dials it
// again, one caller at a time, once it has ended (the guest or the
// transport dropped it).
type redialer struct {
	kind byte
	what string // for errors and logs
	mu   sync.Mutex
	conn *ttrpcConn // nil before the first dial
}

// ttrpcConn is one TTRPC client; closed is closed once its connection has
// ended, whoever ended it.
type ttrpcConn struct {
	client *ttrpc.Client
	closed chan struct{}
}

func (t *ttrpcConn) alive() bool {
	select {
	case <-t.closed:
		return false
	default:
		return true
	}
}

// get returns the live client, or dials a new one if check allows.
func (r *redialer) get(ctx context.Context, i *Instance, check func() error) (*ttrpc.Client, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.getLocked(ctx, i, check)
}

func (r *redialer) getLocked(ctx context.Context, i *Instance, check func() error) (*ttrpc.Client, error) {
	if t := r.conn; t != nil && t.alive() {
		return t.client, nil
	}
	if err := check(); err != nil {
		return nil, err
	}
	c, err := i.dial(ctx, r.kind, "")
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("vm %s: connect to the %s: %w", i.cfg.ID, r.what, err)
		}
		return nil, fmt.Errorf("vm %s: connect to the %s: %w: %w", i.cfg.ID, r.what, err, errdefs.ErrUnavailable)
	}
	closed := make(chan struct{})
	t := &ttrpcConn{client: ttrpc.NewClient(c, ttrpc.WithOnClose(func() { close(closed) })), closed: closed}
	if r.conn != nil {
		log.G(ctx).WithField("vm", i.cfg.ID).Infof("%s connection had ended: connected again", r.what)
		r.conn.client.Close()
	}
	r.conn = t
	return t.client, nil
}

// current is the client last dialled, live or not (nil before any).
func (r *redialer) current() *ttrpc.Client {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conn == nil {
		return nil
	}
	return r.conn.client
}

// closeLocked ends the connection, if there is one.
func (r *redialer) closeLocked() {
	if r.conn != nil {
		r.conn.client.Close()
		r.conn = nil
	}
}

func (r *redialer) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closeLocked()
}

// TaskClient returns a TTRPC client to the guest's task service (containerd's
// task API and the event stream). The connection is made on first use and
// kept; once it has ended (the guest or the transport dropped it), the next
// call makes a new one, one caller at a time, and a client returned earlier
// fails with ttrpc.ErrClosed: ask again rather than keep it. Once the VM is
// shut down or QEMU has exited, the error wraps errdefs.ErrUnavailable;
// before Start has finished it wraps errdefs.ErrFailedPrecondition.
func (i *Instance) TaskClient(ctx context.Context) (*ttrpc.Client, error) {
	check := func() error { return i.requireGuest("reach the task service", StateRunning) }
	// A VM that is gone says so even while its last client lives on.
	if err := check(); err != nil {
		return nil, err
	}
	return i.tasks.get(ctx, i, check)
}

// closeTaskClient ends the task service's connection, if there is one.
func (i *Instance) closeTaskClient() { i.tasks.close() }

// requireGuest checks that the guest can be reached: the VM is in one of
// the states and QEMU has not exited (its exit is noticed before the state
// changes).
func (i *Instance) requireGuest(op string, states ...State) error {
	switch s := i.state.get(); {
	case s == StateShutdown:
		return fmt.Errorf("vm %s: cannot %s: the VM is shut down: %w", i.cfg.ID, op, errdefs.ErrUnavailable)
	case !containsState(states, s):
		return i.state.require(i.cfg.ID, op, states[len(states)-1])
	}
	if i.proc != nil {
		select {
		case <-i.proc.exited:
			return fmt.Errorf("vm %s: cannot %s: QEMU has exited (%s): %w", i.cfg.ID, op, i.proc.describe(), errdefs.ErrUnavailable)
		default:
		}
	}
	return nil
}

func containsState(states []State, s State) bool {
	for _, w := range states {
		if w == s {
			return true
		}
	}
	return false
}

// agentClient returns the live TTRPC client of the agent's VM-level
// service, dialling a new one while the VM starts or runs if the last has
// ended. A live client is returned in any state, so that Shutdown can still
// ask the agent to power off.
func (i *Instance) agentClient(ctx context.Context) (*ttrpc.Client, error) {
	return i.agentConn.get(ctx, i, i.checkAgent)
}

func (i *Instance) checkAgent() error {
	return i.requireGuest("reach the agent", StateStarting, StateRunning)
}

// agentProxy is the agent's service over whichever connection is live.
type agentProxy struct{ i *Instance }

func (p agentProxy) service(ctx context.Context) (agentapi.AgentService, error) {
	c, err := p.i.agentClient(ctx)
	if err != nil {
		return nil, err
	}
	return agentapi.NewAgentClient(c), nil
}

func (p agentProxy) Info(ctx context.Context, r *agentapi.InfoRequest) (*agentapi.InfoResponse, error) {
	s, err := p.service(ctx)
	if err != nil {
		return nil, err
	}
	return s.Info(ctx, r)
}

func (p agentProxy) MountBlock(ctx context.Context, r *agentapi.MountBlockRequest) (*agentapi.MountBlockResponse, error) {
	s, err := p.service(ctx)
	if err != nil {
		return nil, err
	}
	return s.MountBlock(ctx, r)
}

func (p agentProxy) UnmountBlock(ctx context.Context, r *agentapi.UnmountBlockRequest) (*emptypb.Empty, error) {
	s, err := p.service(ctx)
	if err != nil {
		return nil, err
	}
	return s.UnmountBlock(ctx, r)
}

func (p agentProxy) ReadFile(ctx context.Context, r *agentapi.ReadFileRequest) (*agentapi.ReadFileResponse, error) {
	s, err := p.service(ctx)
	if err != nil {
		return nil, err
	}
	return s.ReadFile(ctx, r)
}

func (p agentProxy) Shutdown(ctx context.Context, r *agentapi.ShutdownRequest) (*emptypb.Empty, error) {
	s, err := p.service(ctx)
	if err != nil {
		return nil, err
	}
	return s.Shutdown(ctx, r)
}

func (p agentProxy) SetCPUsOnline(ctx context.Context, r *agentapi.SetCPUsOnlineRequest) (*agentapi.SetCPUsOnlineResponse, error) {
	s, err := p.service(ctx)
	if err != nil {
		return nil, err
	}
	return s.SetCPUsOnline(ctx, r)
}

func (p agentProxy) Prepare(ctx context.Context, r *agentapi.PrepareRequest) (*emptypb.Empty, error) {
	s, err := p.service(ctx)
	if err != nil {
		return nil, err
	}
	return s.Prepare(ctx, r)
}

func (p agentProxy) Restored(ctx context.Context, r *agentapi.RestoredRequest) (*emptypb.Empty, error) {
	s, err := p.service(ctx)
	if err != nil {
		return nil, err
	}
	return s.Restored(ctx, r)
}
