package serial

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// Host is the host's end: one handshaken yamux session over the port's
// Unix socket.
type Host struct {
	session *yamux.Session
}

// Connect dials the Unix socket behind the agent's port and handshakes with
// the guest, retrying until ctx ends.
func Connect(ctx context.Context, socketPath string) (*Host, error) {
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", socketPath)
		if err == nil {
			h, err := handshake(ctx, conn)
			if err != nil {
				conn.Close()
				return nil, err
			}
			return h, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to agent port %s: %w (last error: %v)", socketPath, ctx.Err(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Park greets the guest behind socketPath until it answers, then goes away
// without starting a session: the guest is left waiting for its next host,
// answering pings, as at boot. A VM saved in that state greets whoever
// restores it the same way.
func Park(ctx context.Context, socketPath string) error {
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", socketPath)
		if err == nil {
			err = greet(ctx, conn)
			conn.Close()
			if err != nil {
				return err
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("connect to agent port %s: %w (last error: %v)", socketPath, ctx.Err(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func handshake(ctx context.Context, conn net.Conn) (*Host, error) {
	if err := greet(ctx, conn); err != nil {
		return nil, err
	}
	if _, err := conn.Write(tokenStart); err != nil {
		return nil, fmt.Errorf("handshake with guest agent: %w", err)
	}
	session, err := yamux.Client(newBatchConn(&readyStripper{Conn: conn}), yamuxConfig())
	if err != nil {
		return nil, fmt.Errorf("start stream multiplexer: %w", err)
	}
	return &Host{session: session}, nil
}

// greet pings the guest until it answers ready.
func greet(ctx context.Context, conn net.Conn) error {
	// Unblock the reads below when ctx ends.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var wmu sync.Mutex
	write := func(tok []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		_, err := conn.Write(tok)
		return err
	}
	pingDone := make(chan struct{})
	pingExited := make(chan struct{})
	go func() {
		defer close(pingExited)
		t := time.NewTicker(pingInterval)
		defer t.Stop()
		for {
			if write(tokenPing) != nil {
				return
			}
			select {
			case <-pingDone:
				return
			case <-t.C:
			}
		}
	}()
	err := scanFor(conn, tokenReady, nil)
	close(pingDone)
	<-pingExited
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("handshake with guest agent: %w", ctx.Err())
		}
		return fmt.Errorf("handshake with guest agent: %w", err)
	}
	if !stop() {
		return fmt.Errorf("handshake with guest agent: %w", ctx.Err())
	}
	conn.SetDeadline(time.Time{})
	return nil
}

// Dial opens a new logical connection to the agent.
func (h *Host) Dial(ctx context.Context) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := h.session.OpenStream()
		ch <- result{s, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("open stream to agent: %w", r.err)
		}
		return r.c, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, fmt.Errorf("open stream to agent: %w", ctx.Err())
	}
}

// Done is closed when the session ends.
func (h *Host) Done() <-chan struct{} { return h.session.CloseChan() }

// Close ends the session and every stream in it.
func (h *Host) Close() error {
	if err := h.session.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// readyStripper drops the ready tokens that the guest may still send after
// the host's start token (one per ping it had not yet answered).
type readyStripper struct {
	net.Conn
	done    bool
	pending []byte
}

func (r *readyStripper) Read(p []byte) (int, error) {
	for !r.done {
		for len(r.pending) < tokenLen {
			if len(r.pending) > 0 && r.pending[0] != tokenReady[0] {
				break
			}
			buf := make([]byte, tokenLen-len(r.pending))
			n, err := r.Conn.Read(buf)
			r.pending = append(r.pending, buf[:n]...)
			if err != nil {
				if len(r.pending) == 0 {
					return 0, err
				}
				break
			}
			if n == 0 {
				return 0, io.ErrNoProgress
			}
		}
		if len(r.pending) == tokenLen && string(r.pending) == string(tokenReady) {
			r.pending = r.pending[:0]
			continue
		}
		r.done = true
	}
	if len(r.pending) > 0 {
		n := copy(p, r.pending)
		r.pending = r.pending[n:]
		return n, nil
	}
	return r.Conn.Read(p)
}
