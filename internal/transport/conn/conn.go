package conn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
)

// Kinds of connection.
const (
	// KindTTRPC is the agent's own TTRPC (VM-level services).
	KindTTRPC byte = 'T'
	// KindTask is the TTRPC of the task service (containers, events).
	KindTask byte = 'K'
	// KindStream is a named stdio stream.
	KindStream byte = 'S'
)

// StreamPrefix marks a stdio field (CreateTaskRequest.Stdout, ...) that
// names a stream rather than a path.
const StreamPrefix = "stream:"

// MaxNameLen bounds a stream name.
const MaxNameLen = 128

var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]*$`)

// ValidName checks a stream name.
func ValidName(name string) error {
	if len(name) == 0 || len(name) > MaxNameLen || !validName.MatchString(name) {
		return fmt.Errorf("stream name %q: want 1-%d letters, digits, '.', '_', ':' or '-': %w", name, MaxNameLen, errdefs.ErrInvalidArgument)
	}
	return nil
}

// WriteHeader starts a connection.
func WriteHeader(w io.Writer, kind byte, name string) error {
	if kind == KindStream {
		if err := ValidName(name); err != nil {
			return err
		}
	} else {
		name = ""
	}
	_, err := w.Write(append([]byte{kind, byte(len(name))}, name...))
	return err
}

// ReadHeader reads what WriteHeader wrote, refusing anything malformed.
func ReadHeader(r io.Reader) (kind byte, name string, err error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, "", fmt.Errorf("read connection header: %w", err)
	}
	kind = hdr[0]
	switch kind {
	case KindTTRPC, KindTask:
		if hdr[1] != 0 {
			return 0, "", errors.New("TTRPC connection header with a name")
		}
		return kind, "", nil
	case KindStream:
		b := make([]byte, hdr[1])
		if _, err := io.ReadFull(r, b); err != nil {
			return 0, "", fmt.Errorf("read stream name: %w", err)
		}
		if err := ValidName(string(b)); err != nil {
			return 0, "", err
		}
		return kind, string(b), nil
	}
	return 0, "", fmt.Errorf("unknown connection kind %q", kind)
}

// StreamName returns the name in a "stream:NAME" stdio field, or "" for an
// empty field.
func StreamName(field string) (string, error) {
	if field == "" {
		return "", nil
	}
	name, ok := strings.CutPrefix(field, StreamPrefix)
	if !ok {
		return "", fmt.Errorf("stdio %q: want %sNAME: %w", field, StreamPrefix, errdefs.ErrInvalidArgument)
	}
	return name, ValidName(name)
}

// Demux sorts the connections of a listener: those of its TTRPC kind go to
// Listener, streams to TakeStream, and, when Forward is set, every other
// kind (and every stream) to Forward instead.
type Demux struct {
	l         net.Listener
	ttrpcKind byte
	forward   func(kind byte, name string, c net.Conn)
	ttrpc     chan net.Conn
	closed    chan struct{}
	once      sync.Once
	timeout   time.Duration

	mu      sync.Mutex
	streams map[string]net.Conn
	waiters map[string]chan struct{}
}

// NewDemux starts sorting l's connections; TTRPC connections of ttrpcKind
// are served through Listener. forward, when not nil, takes every
// connection of another kind.
func NewDemux(l net.Listener, ttrpcKind byte, forward func(kind byte, name string, c net.Conn)) *Demux {
	d := &Demux{
		l: l, ttrpcKind: ttrpcKind, forward: forward, ttrpc: make(chan net.Conn), closed: make(chan struct{}), timeout: 10 * time.Second,
		streams: map[string]net.Conn{}, waiters: map[string]chan struct{}{},
	}
	go d.run()
	return d
}

func (d *Demux) run() {
	for {
		c, err := d.l.Accept()
		if err != nil {
			d.Close()
			return
		}
		go d.sort(c)
	}
}

func (d *Demux) sort(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(d.timeout))
	kind, name, err := ReadHeader(c)
	c.SetReadDeadline(time.Time{})
	if err != nil {
		c.Close()
		return
	}
	if kind == d.ttrpcKind {
		select {
		case d.ttrpc <- c:
		case <-d.closed:
			c.Close()
		}
		return
	}
	if d.forward != nil {
		d.forward(kind, name, c)
		return
	}
	if kind != KindStream {
		c.Close()
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if old, ok := d.streams[name]; ok {
		old.Close() // the host reopened it
	}
	d.streams[name] = c
	if w, ok := d.waiters[name]; ok {
		close(w)
		delete(d.waiters, name)
	}
}

// TakeStream waits up to wait for the stream called name and hands it over.
func (d *Demux) TakeStream(ctx context.Context, name string, wait time.Duration) (net.Conn, error) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		d.mu.Lock()
		if c, ok := d.streams[name]; ok {
			delete(d.streams, name)
			d.mu.Unlock()
			return c, nil
		}
		w, ok := d.waiters[name]
		if !ok {
			w = make(chan struct{})
			d.waiters[name] = w
		}
		d.mu.Unlock()
		select {
		case <-w:
		case <-deadline.C:
			return nil, fmt.Errorf("stream %q never arrived: %w", name, errdefs.ErrNotFound)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-d.closed:
			return nil, net.ErrClosed
		}
	}
}

// Listener returns the TTRPC connections as a listener.
func (d *Demux) Listener() net.Listener { return ttrpcListener{d} }

// Close stops accepting.
func (d *Demux) Close() error {
	d.once.Do(func() {
		close(d.closed)
		d.l.Close()
		d.mu.Lock()
		for n, c := range d.streams {
			c.Close()
			delete(d.streams, n)
		}
		d.mu.Unlock()
	})
	return nil
}

type ttrpcListener struct{ d *Demux }

func (l ttrpcListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.d.ttrpc:
		return c, nil
	case <-l.d.closed:
		return nil, net.ErrClosed
	}
}

func (l ttrpcListener) Close() error   { return l.d.Close() }
func (l ttrpcListener) Addr() net.Addr { return l.d.l.Addr() }
