package stdio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/process"
	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	"github.com/containerd/log"

	"github.com/qemu-shim/qemu-shim/internal/syncutil"
	"github.com/qemu-shim/qemu-shim/internal/transport/conn"
)

// Stdio is what containerd asked for.
type Stdio struct {
	Stdin, Stdout, Stderr string
	Terminal              bool
}

// Dialer opens a named stream to the guest.
type Dialer func(ctx context.Context, name string) (net.Conn, error)

// IO is one process's stdio on the host.
type IO struct {
	outputs   sync.WaitGroup
	stdinOnce sync.Once
	// stdin is the guest's stdin stream; stdinHold is the shim's own write
	// end of the stdin fifo, which keeps the fifo open while clients
	// detach and reattach, as the runc shim does: the process's stdin ends
	// only after CloseIO, once everything written before it is delivered.
	stdin     net.Conn
	stdinHold io.Closer
	holdOnce  sync.Once
	mu        sync.Mutex
	closers   []io.Closer
	logger    *exec.Cmd
}

// Open dials the guest streams (named prefix-i, prefix-o, prefix-e) and
// joins them to containerd's side. It returns the stdio fields to hand the
// guest. On error nothing is left open.
func Open(ctx context.Context, namespace, id string, s Stdio, prefix string, dial Dialer) (_ *IO, guest Stdio, retErr error) {
	p := &IO{}
	defer func() {
		if retErr != nil {
			p.Close()
		}
	}()
	guest.Terminal = s.Terminal
	stdout, stderr, err := p.outputWriters(ctx, namespace, id, s)
	if err != nil {
		return nil, guest, err
	}
	outputs := []struct {
		w     io.WriteCloser
		name  string
		field *string
	}{{stdout, prefix + "-o", &guest.Stdout}, {stderr, prefix + "-e", &guest.Stderr}}
	for i, o := range outputs {
		if o.w == nil {
			continue
		}
		c, err := dial(ctx, o.name)
		if err != nil {
			// This writer and the ones after it have no copy to close them.
			for _, rest := range outputs[i:] {
				if rest.w != nil {
					rest.w.Close()
				}
			}
			return nil, guest, err
		}
		p.track(c)
		*o.field = conn.StreamPrefix + o.name
		p.outputs.Add(1)
		go func(w io.WriteCloser, c net.Conn) {
			defer p.outputs.Done()
			if _, err := io.Copy(w, c); err != nil && !errors.Is(err, net.ErrClosed) {
				log.G(ctx).WithError(err).Debug("copy process output")
			}
			w.Close()
			c.Close()
		}(o.w, c)
	}
	if s.Stdin != "" {
		f, err := fifo.OpenFifo(context.WithoutCancel(ctx), s.Stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, guest, fmt.Errorf("open stdin %s: %w", s.Stdin, err)
		}
		p.track(f)
		c, err := dial(ctx, prefix+"-i")
		if err != nil {
			return nil, guest, err
		}
		p.stdin = c
		hold, err := fifo.OpenFifo(context.WithoutCancel(ctx), s.Stdin, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, guest, fmt.Errorf("open stdin %s: %w", s.Stdin, err)
		}
		p.stdinHold = hold
		p.track(hold)
		guest.Stdin = conn.StreamPrefix + prefix + "-i"
		go func() {
			// Until every writer is gone: the clients and, after CloseIO,
			// the shim's own.
			io.Copy(c, f)
			p.closeStdinStream()
		}()
	}
	return p, guest, nil
}

func (p *IO) track(c io.Closer) {
	p.mu.Lock()
	p.closers = append(p.closers, c)
	p.mu.Unlock()
}

// outputWriters opens where stdout and stderr go: fifos or files, a log
// file (file://) or a logging binary (binary://).
func (p *IO) outputWriters(ctx context.Context, namespace, id string, s Stdio) (stdout, stderr io.WriteCloser, err error) {
	u, err := url.Parse(s.Stdout)
	if err == nil && u.Scheme != "" && u.Scheme != "fifo" {
		switch u.Scheme {
		case "file":
			if err := os.MkdirAll(filepath.Dir(u.Path), 0o755); err != nil {
				return nil, nil, err
			}
			f, err := os.OpenFile(u.Path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
			if err != nil {
				return nil, nil, fmt.Errorf("open log file %s: %w", u.Path, err)
			}
			p.track(f)
			shared := &refCloser{WriteCloser: &lockedWriter{w: f}, refs: 2}
			return shared, shared, nil
		case "binary", "binary-v2":
			return p.startLogger(ctx, namespace, id, u)
		default:
			return nil, nil, fmt.Errorf("stdout URI scheme %q is not supported (want a fifo, file:// or binary://): %w", u.Scheme, errdefs.ErrNotImplemented)
		}
	}
	open := func(path string) (io.WriteCloser, error) {
		if path == "" {
			return nil, nil
		}
		if ok, _ := fifo.IsFifo(path); ok {
			w, err := fifo.OpenFifo(ctx, path, syscall.O_WRONLY, 0)
			if err != nil {
				return nil, fmt.Errorf("open fifo %s: %w", path, err)
			}
			// Hold a reader too, so that writes never fail with EPIPE
			// while containerd's side is away.
			r, err := fifo.OpenFifo(ctx, path, syscall.O_RDONLY, 0)
			if err != nil {
				w.Close()
				return nil, fmt.Errorf("open fifo %s: %w", path, err)
			}
			p.track(r)
			return w, nil
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", path, err)
		}
		return f, nil
	}
	if stdout, err = open(s.Stdout); err != nil {
		return nil, nil, err
	}
	if s.Terminal {
		return stdout, nil, nil // a terminal has one output
	}
	if s.Stderr == s.Stdout && stdout != nil {
		shared := &refCloser{WriteCloser: &lockedWriter{w: stdout}, refs: 2}
		return shared, shared, nil
	}
	if stderr, err = open(s.Stderr); err != nil {
		if stdout != nil {
			stdout.Close()
		}
		return nil, nil, err
	}
	return stdout, stderr, nil
}

// startLogger runs a binary:// logger as containerd's runc shim does: it
// reads stdout on fd 3 and stderr on fd 4, and closes fd 5 when ready.
func (p *IO) startLogger(ctx context.Context, namespace, id string, u *url.URL) (io.WriteCloser, io.WriteCloser, error) {
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, nil, err
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		errR.Close()
		errW.Close()
		return nil, nil, err
	}
	// The logger is started as the runc shim starts it: its arguments
	// from the URI's query, CONTAINER_ID and CONTAINER_NAMESPACE its only
	// environment.
	cmd := process.NewBinaryCmd(u, id, namespace)
	cmd.ExtraFiles = []*os.File{outR, errR, readyW}
	err = cmd.Start()
	outR.Close()
	errR.Close()
	readyW.Close()
	if err != nil {
		outW.Close()
		errW.Close()
		readyR.Close()
		return nil, nil, fmt.Errorf("start logging binary %s: %w", u.Path, err)
	}
	p.logger = cmd
	b := make([]byte, 1)
	n, _ := readyR.Read(b)
	readyR.Close()
	if u.Scheme == "binary-v2" && n == 0 {
		cmd.Process.Kill()
		cmd.Wait()
		outW.Close()
		errW.Close()
		return nil, nil, errors.New("logging binary did not signal ready")
	}
	return outW, errW, nil
}

// CloseStdin is CloseIO's: the process's stdin ends (the guest sees end
// of file) once what clients wrote before is delivered.
func (p *IO) CloseStdin() {
	p.holdOnce.Do(func() {
		if p.stdinHold != nil {
			p.stdinHold.Close()
			return
		}
		p.closeStdinStream()
	})
}

func (p *IO) closeStdinStream() {
	p.stdinOnce.Do(func() {
		if p.stdin != nil {
			p.stdin.Close()
		}
	})
}

// Wait waits up to d for every output to be copied out.
func (p *IO) Wait(d time.Duration) bool { return syncutil.WaitTimeout(&p.outputs, d) }

// Close releases everything; a logging binary gets time to finish.
func (p *IO) Close() error {
	p.closeStdinStream()
	p.mu.Lock()
	closers, logger := p.closers, p.logger
	p.closers, p.logger = nil, nil
	p.mu.Unlock()
	for _, c := range closers {
		c.Close()
	}
	if logger != nil {
		done := make(chan struct{})
		go func() { logger.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(12 * time.Second):
			logger.Process.Kill()
			<-done
		}
	}
	return nil
}

// refCloser closes the underlying writer on its last Close.
type refCloser struct {
	io.WriteCloser
	mu   sync.Mutex
	refs int
}

func (r *refCloser) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refs--
	if r.refs == 0 {
		return r.WriteCloser.Close()
	}
	return nil
}

// lockedWriter serialises writes from two copies into one file.
type lockedWriter struct {
	mu sync.Mutex
	w  io.WriteCloser
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func (l *lockedWriter) Close() error { return l.w.Close() }
