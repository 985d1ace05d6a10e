package vm

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"

	"github.com/qemu-shim/qemu-shim/internal/transport/conn"
)

// taskConn is one TTRPC connection to the guest's task service; closed is
// closed once the client's connection has ended, whoever ended it.
type taskConn struct {
	client *ttrpc.Client
	closed chan struct{}
}

func newTaskConn(c *ttrpc.Client, closed chan struct{}) *taskConn {
	return &taskConn{client: c, closed: closed}
}

func (t *taskConn) alive() bool {
	select {
	case <-t.closed:
		return false
	default:
		return true
	}
}

// TaskClient returns a TTRPC client to the guest's task service (containerd's
// task API and the event stream). The connection is made on first use and
// kept; once it has ended (the guest or the transport dropped it), the next
// call makes a new one, one caller at a time, and a client returned earlier
// fails with ttrpc.ErrClosed: ask again rather than keep it. Once the VM is
// shut down or QEMU has exited, the error wraps errdefs.ErrUnavailable;
// before Start has finished it wraps errdefs.ErrFailedPrecondition.
func (i *Instance) TaskClient(ctx context.Context) (*ttrpc.Client, error) {
	const op = "reach the task service"
	if err := i.requireGuest(op); err != nil {
		return nil, err
	}
	i.taskMu.Lock()
	defer i.taskMu.Unlock()
	if t := i.task; t != nil && t.alive() {
		return t.client, nil
	}
	// The VM may have gone while this caller waited for the lock.
	if err := i.requireGuest(op); err != nil {
		return nil, err
	}
	c, err := i.dial(ctx, conn.KindTask, "")
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("vm %s: connect to the task service: %w", i.cfg.ID, err)
		}
		return nil, fmt.Errorf("vm %s: connect to the task service: %w: %w", i.cfg.ID, err, errdefs.ErrUnavailable)
	}
	closed := make(chan struct{})
	t := newTaskConn(ttrpc.NewClient(c, ttrpc.WithOnClose(func() { close(closed) })), closed)
	if i.task != nil {
		log.G(ctx).WithField("vm", i.cfg.ID).Info("task service connection had ended: connected again")
		i.task.client.Close()
	}
	i.task = t
	return t.client, nil
}

// requireGuest checks that the guest can be reached: the VM is running and
// QEMU has not exited (its exit is noticed before the state changes).
func (i *Instance) requireGuest(op string) error {
	switch s := i.state.get(); s {
	case StateRunning:
	case StateShutdown:
		return fmt.Errorf("vm %s: cannot %s: the VM is shut down: %w", i.cfg.ID, op, errdefs.ErrUnavailable)
	default:
		return i.state.require(i.cfg.ID, op, StateRunning)
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

// closeTaskClient ends the task service's connection, if there is one.
func (i *Instance) closeTaskClient() {
	i.taskMu.Lock()
	defer i.taskMu.Unlock()
	if i.task != nil {
		i.task.client.Close()
		i.task = nil
	}
}
