package task

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/errdefs"
	"github.com/containerd/go-runc"
	"github.com/containerd/log"

	"github.com/qemu-shim/qemu-shim/internal/syncutil"
	"github.com/qemu-shim/qemu-shim/internal/transport/conn"
)

// StreamSource hands over the stdio streams the host opened.
type StreamSource interface {
	TakeStream(ctx context.Context, name string, wait time.Duration) (net.Conn, error)
}

// streamWait bounds how long Create and Exec wait for a stream the host
// named but has not opened yet.
const streamWait = 10 * time.Second

// drainWait bounds how long an exit waits for the process's output to be
// copied out (a background child may keep the pipe open forever).
const drainWait = 5 * time.Second

// stdio are a process's streams as the host named them.
type stdio struct {
	stdin, stdout, stderr string
	terminal              bool
}

// procIO connects one process's stdio to the host's streams.
type procIO struct {
	terminal bool
	pipes    runc.IO
	socket   *runc.Socket
	console  console.Console

	stdin, stdout, stderr net.Conn

	stdinOnce sync.Once
	stdinDst  io.WriteCloser
	copies    sync.WaitGroup
}

// newProcIO takes the named streams and prepares pipes (or a console socket
// for a terminal) for runc. On error nothing is left open.
func newProcIO(ctx context.Context, src StreamSource, names stdio, uid, gid int) (_ *procIO, retErr error) {
	p := &procIO{terminal: names.terminal}
	defer func() {
		if retErr != nil {
			p.close()
		}
	}()
	for _, s := range []struct {
		field string
		dst   *net.Conn
	}{{names.stdin, &p.stdin}, {names.stdout, &p.stdout}, {names.stderr, &p.stderr}} {
		name, err := conn.StreamName(s.field)
		if err != nil {
			return nil, err
		}
		if name == "" {
			continue
		}
		if *s.dst, err = src.TakeStream(ctx, name, streamWait); err != nil {
			return nil, err
		}
	}
	if p.terminal {
		socket, err := runc.NewTempConsoleSocket()
		if err != nil {
			return nil, fmt.Errorf("create console socket: %w", err)
		}
		p.socket = socket
		return p, nil
	}
	// Output pipes always exist (an output nobody reads is discarded):
	// go-runc waits for a detached runc's output to end when there is none,
	// which a process that inherits it would never let happen.
	pipes, err := runc.NewPipeIO(uid, gid, func(o *runc.IOOption) { o.OpenStdin = p.stdin != nil })
	if err != nil {
		return nil, fmt.Errorf("create stdio pipes: %w", err)
	}
	p.pipes = pipes
	return p, nil
}

// runcIO is what runc's create or exec gets.
func (p *procIO) runcIO() runc.IO {
	if p.pipes != nil {
		return p.pipes
	}
	return nil
}

func (p *procIO) consoleSocket() runc.ConsoleSocket {
	if p.socket != nil {
		return p.socket
	}
	return nil
}

// start begins copying once runc has started the process.
func (p *procIO) start(ctx context.Context) error {
	if p.terminal {
		master, err := p.socket.ReceiveMaster()
		p.socket.Close()
		p.socket = nil
		if err != nil {
			return fmt.Errorf("receive the console from runc: %w", err)
		}
		p.console = master
		if p.stderr != nil {
			p.stderr.Close() // a terminal has one output
		}
		p.copyOut(ctx, p.stdout, master)
		p.copyIn(ctx, master, nopCloser{master})
		return nil
	}
	if sc, ok := p.pipes.(runc.StartCloser); ok {
		if err := sc.CloseAfterStart(); err != nil {
			return err
		}
	}
	p.copyOut(ctx, p.stdout, p.pipes.Stdout())
	p.copyOut(ctx, p.stderr, p.pipes.Stderr())
	p.copyIn(ctx, p.pipes.Stdin(), p.pipes.Stdin())
	return nil
}

// copyOut copies a process output to its stream and then closes the
// stream, which the host reads as end of file.
func (p *procIO) copyOut(ctx context.Context, dst net.Conn, src io.Reader) {
	if src == nil {
		return
	}
	p.copies.Add(1)
	go func() {
		defer p.copies.Done()
		var w io.Writer = io.Discard
		if dst != nil {
			w = dst
		}
		_, err := io.Copy(w, src)
		// A terminal reports EIO once the last holder of its other end is gone.
		if err != nil && !errors.Is(err, syscall.EIO) && !errors.Is(err, os.ErrClosed) {
			log.G(ctx).WithError(err).Debug("copy process output")
		}
		if dst != nil {
			dst.Close()
		}
	}()
}

// copyIn copies the stdin stream into the process; at its end the
// process's stdin is closed (so that cat ends).
func (p *procIO) copyIn(ctx context.Context, dst io.Writer, closer io.WriteCloser) {
	if p.stdin == nil || dst == nil {
		return
	}
	p.stdinDst = closer
	go func() {
		io.Copy(dst, p.stdin)
		p.closeStdin()
	}()
}

func (p *procIO) closeStdin() {
	p.stdinOnce.Do(func() {
		if p.stdin != nil {
			p.stdin.Close()
		}
		if p.stdinDst != nil && !p.terminal {
			p.stdinDst.Close()
		}
	})
}

// wait waits up to d for the output to be copied out.
func (p *procIO) wait(d time.Duration) bool { return syncutil.WaitTimeout(&p.copies, d) }

func (p *procIO) resize(ws console.WinSize) error {
	if p.console == nil {
		return nil
	}
	return p.console.Resize(ws)
}

// close releases everything, whether or not the process ran.
func (p *procIO) close() {
	if p.socket != nil {
		p.socket.Close()
	}
	if p.pipes != nil {
		p.pipes.Close()
	}
	if p.console != nil {
		p.console.Close()
	}
	for _, c := range []net.Conn{p.stdin, p.stdout, p.stderr} {
		if c != nil {
			c.Close()
		}
	}
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

var errProcessFinished = fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
