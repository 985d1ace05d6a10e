package vsock

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/mdlayher/vsock"
)

// AgentPort is the vsock port the agent listens on.
const AgentPort = 1024

// Host dials the agent of one guest.
type Host struct {
	CID  uint32
	Port uint32
}

// Dial connects to the agent, retrying while the guest is not listening yet,
// until ctx ends.
func (h *Host) Dial(ctx context.Context) (net.Conn, error) {
	backoff := 5 * time.Millisecond
	for {
		c, err := dial(ctx, h.CID, h.Port)
		if err == nil {
			return c, nil
		}
		if !transient(err) {
			return nil, fmt.Errorf("dial agent at vsock cid %d port %d: %w", h.CID, h.Port, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("dial agent at vsock cid %d port %d: %w (last error: %v)", h.CID, h.Port, ctx.Err(), err)
		case <-time.After(backoff):
		}
		if backoff < 100*time.Millisecond {
			backoff *= 2
		}
	}
}

// dial bounds one connection attempt by ctx.
func dial(ctx context.Context, cid, port uint32) (net.Conn, error) {
	c, err := vsock.DialContext(ctx, cid, port, nil)
	if err != nil {
		return nil, err // not a nil *vsock.Conn in a non-nil net.Conn
	}
	return c, nil
}

// transient reports errors that mean "not yet" rather than "never".
func transient(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ETIMEDOUT) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.EINTR)
}

// Close does nothing: every vsock connection is independent.
func (h *Host) Close() error { return nil }

// Listen is the guest's end: it accepts the host's connections on port.
func Listen(port uint32) (net.Listener, error) {
	l, err := vsock.Listen(port, nil)
	if err != nil {
		return nil, fmt.Errorf("listen on vsock port %d: %w", port, err)
	}
	return l, nil
}
