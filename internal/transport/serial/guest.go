package serial

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// Port is the guest's view of a virtio-serial port: a character device that
// can be read and written and whose reads can be interrupted by a deadline.
type Port interface {
	io.ReadWriter
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// FindPort returns the /dev path of the virtio-serial port with this name,
// looking it up in sysfs (there is no udev in the guest to make the
// /dev/virtio-ports links).
func FindPort(sysfsRoot, name string) (string, error) {
	dir := filepath.Join(sysfsRoot, "class", "virtio-ports")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("list virtio-serial ports: %w", err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "name"))
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(b)) == name {
			return filepath.Join("/dev", e.Name()), nil
		}
	}
	return "", fmt.Errorf("no virtio-serial port named %q in %s", name, dir)
}

// Listener is the guest's end of the transport. It accepts the host's
// logical connections and outlives host reconnects: each time the host goes
// away it waits for the next handshake.
type Listener struct {
	port   Port
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once

	mu      sync.Mutex
	session *yamux.Session
}

// Listen serves the port until Close.
func Listen(port Port) *Listener {
	l := &Listener{port: port, conns: make(chan net.Conn), closed: make(chan struct{})}
	go l.run()
	return l
}

func (l *Listener) run() {
	for {
		if err := l.awaitHost(); err != nil {
			return
		}
		sc := &sessionConn{port: l.port}
		session, err := yamux.Server(newBatchConn(sc), yamuxConfig())
		if err != nil {
			return
		}
		l.mu.Lock()
		l.session = session
		l.mu.Unlock()
		l.serve(session)
		session.Close()
		sc.retire()
		select {
		case <-l.closed:
			return
		default:
		}
	}
}

func (l *Listener) serve(session *yamux.Session) {
	for {
		c, err := session.Accept()
		if err != nil {
			return
		}
		select {
		case l.conns <- c:
		case <-l.closed:
			c.Close()
			return
		}
	}
}

// awaitHost announces the guest and answers pings until the host says start.
func (l *Listener) awaitHost() error {
	write := func(tok []byte) error {
		// A write while no host is connected may be dropped or may block:
		// bound it, the host pings again.
		l.port.SetWriteDeadline(time.Now().Add(time.Second))
		l.port.Write(tok)
		l.port.SetWriteDeadline(time.Time{})
		return nil
	}
	write(tokenReady)
	r := &patientReader{port: l.port, closed: l.closed}
	return scanFor(r, tokenStart, func(tok []byte) error {
		if string(tok) == string(tokenPing) {
			return write(tokenReady)
		}
		return nil
	})
}

// Accept waits for the host's next logical connection.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close stops accepting and ends the current session.
func (l *Listener) Close() error {
	l.once.Do(func() {
		close(l.closed)
		l.mu.Lock()
		if l.session != nil {
			l.session.Close()
		}
		l.mu.Unlock()
		l.port.SetReadDeadline(time.Unix(1, 0))
	})
	return nil
}

// Addr names the port.
func (l *Listener) Addr() net.Addr { return portAddr{} }

type portAddr struct{}

func (portAddr) Network() string { return "virtio-serial" }
func (portAddr) String() string  { return PortName }

// patientReader reads the port while no session runs: a read of 0 bytes
// means no host is connected, so it backs off and tries again.
type patientReader struct {
	port   Port
	closed chan struct{}
}

func (r *patientReader) Read(p []byte) (int, error) {
	backoff := 2 * time.Millisecond
	for {
		n, err := r.port.Read(p)
		if n > 0 {
			return n, nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		select {
		case <-r.closed:
			return 0, net.ErrClosed
		case <-time.After(backoff):
		}
		if backoff < 50*time.Millisecond {
			backoff *= 2
		}
	}
}

// sessionConn is the port as one yamux session sees it: a read of 0 bytes
// means the host went away, which ends the session. Closing it leaves the
// port open for the next session.
type sessionConn struct {
	port Port

	readMu sync.Mutex
	dead   bool

	// Writes of a retired session must not reach the next host: they would
	// land in its stream after the handshake and break its framing.
	writeMu   sync.Mutex
	writeDead bool
}

func (c *sessionConn) Read(p []byte) (int, error) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	if c.dead {
		return 0, io.EOF
	}
	n, err := c.port.Read(p)
	if n == 0 && (err == nil || errors.Is(err, io.EOF)) {
		return 0, io.EOF
	}
	return n, err
}

func (c *sessionConn) Write(p []byte) (int, error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if c.writeDead {
		return 0, io.ErrClosedPipe
	}
	return c.port.Write(p)
}

func (c *sessionConn) Close() error { return nil }

// retire makes sure no read of this session is still pending on the port,
// so the next handshake sees every byte.
func (c *sessionConn) retire() {
	// A write still in progress finishes first (on a real port it may wait
	// for the next host to connect): its bytes then come before the next
	// handshake's, where the host skips them.
	c.writeMu.Lock()
	c.writeDead = true
	c.writeMu.Unlock()
	c.port.SetReadDeadline(time.Unix(1, 0))
	c.readMu.Lock()
	c.dead = true
	c.readMu.Unlock()
	c.port.SetReadDeadline(time.Time{})
}
