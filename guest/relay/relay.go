// Package relay is the agent's side of qemu-shim-taskd: it starts the task
// daemon from the tools disk and passes it the host's task connections,
// byte for byte, over a Unix socket; a stdio stream reaches taskd as one
// end of a pipe that the agent feeds or drains itself (see OpenPipe).
package relay

import (
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/qemu-shim/qemu-shim/internal/transport/conn"
)

// DefaultWait bounds how long a task connection waits for taskd to listen.
const DefaultWait = 60 * time.Second

// Relay starts qemu-shim-taskd and passes it the task connections and
// stdio streams.
type Relay struct {
	// Socket is where taskd listens.
	Socket string
	// Wait bounds how long a connection waits for taskd to start and
	// listen; zero means DefaultWait.
	Wait time.Duration

	ready chan struct{}
	once  sync.Once
	mu    sync.Mutex
	pid   int
	// spare is a connection to taskd made ahead of need by Preconnect,
	// its header (of kind spareKind) sent; the next connection of that
	// kind is passed on it.
	spare     net.Conn
	spareKind byte
}

// New returns a relay to a taskd that will listen on socket.
func New(socket string) *Relay {
	return &Relay{Socket: socket, ready: make(chan struct{})}
}

// Start starts taskd (bin, run with -socket and -runc), its stdout and
// stderr on console. The caller reaps it: IsTaskd recognises its pid.
func (t *Relay) Start(bin, runc string, console *os.File) error {
	attr := &os.ProcAttr{Files: []*os.File{nil, console, console}, Env: []string{"PATH=/usr/bin:/bin:/usr/sbin:/sbin"}}
	p, err := os.StartProcess(bin, []string{bin, "-socket", t.Socket, "-runc", runc}, attr)
	if err != nil {
		return err
	}
	t.mu.Lock()
	t.pid = p.Pid
	t.mu.Unlock()
	p.Release() // the caller's reaper collects it
	t.once.Do(func() { close(t.ready) })
	return nil
}

// IsTaskd says whether pid is the taskd Start started.
func (t *Relay) IsTaskd(pid int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return pid != 0 && pid == t.pid
}

// Signal sends sig to the taskd Start started, if any.
func (t *Relay) Signal(sig unix.Signal) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pid == 0 {
		return nil
	}
	return unix.Kill(t.pid, sig)
}

func (t *Relay) wait() time.Duration {
	if t.Wait > 0 {
		return t.Wait
	}
	return DefaultWait
}

// Preconnect makes a TTRPC connection of kind (not a stream) to taskd
// ahead of need, once taskd has started and listens (waiting at most wait
// in all): the next connection of that kind Forward gets is passed on it.
// A guest about to be saved as a template makes one for the host's task
// connection, so that a VM restored from it has taskd's side of that
// connection (its accept and its TTRPC server's set-up) done already:
// under an emulator, that code would otherwise run untranslated on the
// first call's path.
func (t *Relay) Preconnect(kind byte, wait time.Duration) error {
	if kind == conn.KindStream {
		return fmt.Errorf("preconnect: streams are named, each its own connection: %w", errdefs.ErrInvalidArgument)
	}
	deadline := time.Now().Add(wait)
	select {
	case <-t.ready:
	case <-time.After(wait):
		return fmt.Errorf("preconnect: the task service did not start in %v", wait)
	}
	d, err := t.dial(deadline)
	if err != nil {
		return fmt.Errorf("preconnect: %w", err)
	}
	if err := conn.WriteHeader(d, kind, ""); err != nil {
		d.Close()
		return fmt.Errorf("preconnect: %w", err)
	}
	t.mu.Lock()
	old := t.spare
	t.spare, t.spareKind = d, kind
	t.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// takeSpare returns the connection Preconnect made for kind, if any, and
// forgets it.
func (t *Relay) takeSpare(kind byte) net.Conn {
	t.mu.Lock()
	defer t.mu.Unlock()
	d := t.spare
	if d == nil || t.spareKind != kind {
		return nil
	}
	t.spare = nil
	return d
}

// dial connects to taskd's socket, trying again until deadline while
// taskd is not listening yet.
func (t *Relay) dial(deadline time.Time) (net.Conn, error) {
	for {
		d, err := net.Dial("unix", t.Socket)
		if err == nil {
			return d, nil
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Forward hands c to taskd and returns at once: on the connection
// Preconnect made for its kind if there is one, else on a new one,
// prefixed with c's connection header, once taskd listens. c is closed if
// taskd does not start or listen in time.
func (t *Relay) Forward(kind byte, name string, c net.Conn) {
	if kind != conn.KindStream {
		if d := t.takeSpare(kind); d != nil {
			go conn.Splice(c, d)
			return
		}
	}
	go func() {
		wait := t.wait()
		deadline := time.Now().Add(wait)
		select {
		case <-t.ready:
		case <-time.After(wait):
			log.L.Error("task service did not start: dropping a connection")
			c.Close()
			return
		}
		d, err := t.dial(deadline)
		if err != nil {
			log.L.WithError(err).Error("task service not listening: dropping a connection")
			c.Close()
			return
		}
		if err := conn.WriteHeader(d, kind, name); err != nil {
			c.Close()
			d.Close()
			return
		}
		if uc, ok := d.(*net.UnixConn); ok && kind == conn.KindStream {
			pipeStream(c, uc)
			return
		}
		conn.Splice(c, d)
	}()
}
