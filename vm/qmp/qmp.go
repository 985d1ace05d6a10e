package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	qemuqmp "github.com/digitalocean/go-qemu/qmp"
)

// DefaultTimeout bounds a command when its context has no deadline.
const DefaultTimeout = 10 * time.Second

// Event is an asynchronous QMP event.
type Event struct {
	Name      string
	Data      map[string]any
	Timestamp time.Time
}

// Monitor is a connected QMP socket.
type Monitor struct {
	mon *qemuqmp.SocketMonitor

	mu     sync.Mutex
	subs   map[int]chan Event
	nextID int
	closed chan struct{}
}

// Connect dials the QMP socket, retrying until it appears or ctx ends, and
// completes the capabilities handshake.
func Connect(ctx context.Context, path string) (*Monitor, error) {
	var (
		mon *qemuqmp.SocketMonitor
		err error
	)
	for {
		mon, err = qemuqmp.NewSocketMonitor("unix", path, time.Second)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to QMP socket %s: %w (last error: %v)", path, ctx.Err(), err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	done := make(chan error, 1)
	go func() { done <- mon.Connect() }()
	select {
	case err := <-done:
		if err != nil {
			mon.Disconnect()
			return nil, fmt.Errorf("QMP handshake on %s: %w", path, err)
		}
	case <-ctx.Done():
		mon.Disconnect()
		<-done
		return nil, fmt.Errorf("QMP handshake on %s: %w", path, ctx.Err())
	}
	events, err := mon.Events(ctx)
	if err != nil {
		mon.Disconnect()
		return nil, fmt.Errorf("QMP events: %w", err)
	}
	m := &Monitor{mon: mon, subs: map[int]chan Event{}, closed: make(chan struct{})}
	go m.dispatch(events)
	return m, nil
}

// dispatch hands every event to every subscriber. go-qemu's reader blocks
// on events, so this loop must never stop reading while the socket lives.
func (m *Monitor) dispatch(events <-chan qemuqmp.Event) {
	defer close(m.closed)
	for e := range events {
		ev := Event{Name: e.Event, Data: e.Data, Timestamp: time.Unix(int64(e.Timestamp.Seconds), int64(e.Timestamp.Microseconds)*1000)}
		m.mu.Lock()
		for _, ch := range m.subs {
			select {
			case ch <- ev:
			default: // a subscriber that does not keep up loses events, not QMP
			}
		}
		m.mu.Unlock()
	}
	m.mu.Lock()
	for id, ch := range m.subs {
		close(ch)
		delete(m.subs, id)
	}
	m.subs = nil
	m.mu.Unlock()
}

// Subscribe returns a channel of the events that arrive from now on, and a
// function that ends the subscription.
func (m *Monitor) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, 64)
	m.mu.Lock()
	if m.subs == nil {
		m.mu.Unlock()
		close(ch)
		return ch, func() {}
	}
	id := m.nextID
	m.nextID++
	m.subs[id] = ch
	m.mu.Unlock()
	return ch, func() {
		m.mu.Lock()
		if m.subs != nil {
			delete(m.subs, id)
		}
		m.mu.Unlock()
	}
}

// Closed is closed when the QMP connection ends (QEMU exited).
func (m *Monitor) Closed() <-chan struct{} { return m.closed }

// Error is an error QEMU returned for a command.
type Error struct {
	Command string
	Desc    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("QMP %s: %s", e.Command, e.Desc)
}

type request struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
}

type response struct {
	Return json.RawMessage `json:"return"`
}

// Run executes a command with arguments (nil for none) and decodes its
// return value into out (nil to ignore it).
func (m *Monitor) Run(ctx context.Context, command string, args, out any) error {
	return m.run(ctx, command, args, out, nil)
}

// RunWithFile is Run passing a file descriptor along (for getfd).
func (m *Monitor) RunWithFile(ctx context.Context, command string, args, out any, f *os.File) error {
	return m.run(ctx, command, args, out, f)
}

func (m *Monitor) run(ctx context.Context, command string, args, out any, f *os.File) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	b, err := json.Marshal(request{Execute: command, Arguments: args})
	if err != nil {
		return fmt.Errorf("QMP %s: %w", command, err)
	}
	type result struct {
		b   []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		var r result
		if f != nil {
			r.b, r.err = m.mon.RunWithFile(b, f)
		} else {
			r.b, r.err = m.mon.Run(b)
		}
		ch <- r
	}()
	var r result
	select {
	case r = <-ch:
	case <-ctx.Done():
		return fmt.Errorf("QMP %s: %w", command, ctx.Err())
	}
	if r.err != nil {
		var netErr net.Error
		if errors.As(r.err, &netErr) || errors.Is(r.err, io.EOF) || errors.Is(r.err, net.ErrClosed) {
			return fmt.Errorf("QMP %s: %w", command, r.err)
		}
		// go-qemu hands QEMU's error object back as a plain error.
		return &Error{Command: command, Desc: r.err.Error()}
	}
	if out == nil {
		return nil
	}
	var resp response
	if err := json.Unmarshal(r.b, &resp); err != nil {
		return fmt.Errorf("QMP %s: decode reply: %w", command, err)
	}
	if err := json.Unmarshal(resp.Return, out); err != nil {
		return fmt.Errorf("QMP %s: decode reply %s: %w", command, resp.Return, err)
	}
	return nil
}

// WaitEvent waits for an event the match function accepts on a channel from
// Subscribe (subscribe before sending the command that causes it).
func WaitEvent(ctx context.Context, events <-chan Event, match func(Event) bool) (Event, error) {
	for {
		select {
		case e, ok := <-events:
			if !ok {
				return Event{}, net.ErrClosed
			}
			if match(e) {
				return e, nil
			}
		case <-ctx.Done():
			return Event{}, ctx.Err()
		}
	}
}

// Close ends the connection.
func (m *Monitor) Close() error {
	return m.mon.Disconnect()
}
