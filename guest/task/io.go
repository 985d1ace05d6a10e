package task

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/errdefs"
	"github.com/containerd/go-runc"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/qemu-shim/qemu-shim/guest/relay"
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

// procIO connects one process's stdio to the host's streams. Each stream
// reaches taskd as one end of a pipe that the agent feeds or drains
// itself (relay.OpenPipe) and a control connection: the process gets the
// pipe's end as it is, so that its bytes pass through no copy here. With
// a terminal, taskd copies between the console and the pipes.
type procIO struct {
	terminal bool
	socket   *runc.Socket
	console  console.Console

	// The streams' controls, nil where the host named none.
	stdinCtl, stdoutCtl, stderrCtl net.Conn
	// stdin is the read end of stdin's pipe; stdout and stderr the write
	// ends of the outputs' (of a local pipe whose bytes are discarded
	// where the host named no stream). taskd closes its copies once runc
	// has started the process.
	stdin, stdout, stderr *os.File
	// discards are the read ends of the local pipes.
	discards []*os.File

	stdinOnce sync.Once
	// copies ends once every output is drained: each stream's control
	// closed by the agent, each local pipe read to its end.
	copies sync.WaitGroup
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
		ctl   *net.Conn
	}{{names.stdin, &p.stdinCtl}, {names.stdout, &p.stdoutCtl}, {names.stderr, &p.stderrCtl}} {
		name, err := conn.StreamName(s.field)
		if err != nil {
			return nil, err
		}
		if name == "" {
			continue
		}
		if *s.ctl, err = src.TakeStream(ctx, name, streamWait); err != nil {
			return nil, err
		}
	}
	if p.terminal && p.stderrCtl != nil {
		p.stderrCtl.Close() // a terminal has one output
		p.stderrCtl = nil
	}
	for _, s := range []struct {
		ctl  net.Conn
		dir  byte
		file **os.File
	}{{p.stdinCtl, relay.PipeRead, &p.stdin}, {p.stdoutCtl, relay.PipeWrite, &p.stdout}, {p.stderrCtl, relay.PipeWrite, &p.stderr}} {
		if s.ctl == nil {
			continue
		}
		// With a terminal, taskd copies to and from the pipe: closing it
		// must interrupt the copy.
		f, err := relay.OpenPipe(s.ctl, s.dir, p.terminal)
		if err != nil {
			return nil, err
		}
		*s.file = f
		if p.terminal {
			continue
		}
		// The process may reopen its stdio (/dev/stdout) as its own user.
		if err := unix.Fchown(int(f.Fd()), uid, gid); err != nil {
			return nil, fmt.Errorf("chown stdio pipe: %w", err)
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
	for _, out := range []**os.File{&p.stdout, &p.stderr} {
		if *out != nil {
			continue
		}
		r, w, err := discardPipe()
		if err != nil {
			return nil, err
		}
		p.discards = append(p.discards, r)
		*out = w
		if err := unix.Fchown(int(w.Fd()), uid, gid); err != nil {
			return nil, fmt.Errorf("chown stdio pipe: %w", err)
		}
	}
	return p, nil
}

// discardPipe makes a pipe whose write end is blocking, for a process, and
// whose read end taskd reads.
func discardPipe() (r, w *os.File, err error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return nil, nil, fmt.Errorf("create stdio pipe: %w", err)
	}
	unix.SetNonblock(fds[0], true)
	return os.NewFile(uintptr(fds[0]), "discard"), os.NewFile(uintptr(fds[1]), "discard"), nil
}

// runcIO is what runc's create or exec gets.
func (p *procIO) runcIO() runc.IO {
	if p.terminal {
		return nil
	}
	return processPipes{p}
}

func (p *procIO) consoleSocket() runc.ConsoleSocket {
	if p.socket != nil {
		return p.socket
	}
	return nil
}

// start begins copying once runc has started the process.
func (p *procIO) start(ctx context.Context) error {
	for _, ctl := range []net.Conn{p.stdoutCtl, p.stderrCtl} {
		if ctl == nil {
			continue
		}
		p.copies.Add(1)
		go func() {
			defer p.copies.Done()
			io.Copy(io.Discard, ctl) // the agent closes it once drained
		}()
	}
	if p.terminal {
		master, err := p.socket.ReceiveMaster()
		p.socket.Close()
		p.socket = nil
		if err != nil {
			return fmt.Errorf("receive the console from runc: %w", err)
		}
		p.console = master
		if p.stdout != nil {
			p.copy(ctx, p.stdout, master, true)
		} else {
			p.copy(ctx, io.Discard, master, true)
		}
		if p.stdin != nil {
			go io.Copy(master, p.stdin)
		}
		return nil
	}
	processPipes{p}.CloseAfterStart()
	for _, r := range p.discards {
		p.copy(ctx, io.Discard, r, false)
	}
	return nil
}

// copy copies a process output to w (closing w after when asked).
func (p *procIO) copy(ctx context.Context, w io.Writer, r io.Reader, closeAfter bool) {
	p.copies.Add(1)
	go func() {
		defer p.copies.Done()
		_, err := io.Copy(w, r)
		// A terminal reports EIO once the last holder of its other end is gone.
		if err != nil && !errors.Is(err, syscall.EIO) && !errors.Is(err, os.ErrClosed) {
			log.G(ctx).WithError(err).Debug("copy process output")
		}
		if c, ok := w.(io.Closer); ok && closeAfter {
			c.Close()
		}
	}()
}

// closeStdin ends the process's stdin: the agent closes its pipe.
func (p *procIO) closeStdin() {
	p.stdinOnce.Do(func() {
		if p.stdinCtl != nil {
			p.stdinCtl.Close()
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
	if p.console != nil {
		p.console.Close()
	}
	for _, f := range append([]*os.File{p.stdin, p.stdout, p.stderr}, p.discards...) {
		if f != nil {
			f.Close()
		}
	}
	for _, c := range []net.Conn{p.stdinCtl, p.stdoutCtl, p.stderrCtl} {
		if c != nil {
			c.Close()
		}
	}
}

// processPipes gives runc the process's ends of the pipes.
type processPipes struct{ p *procIO }

func (pp processPipes) Set(cmd *exec.Cmd) {
	if pp.p.stdin != nil {
		cmd.Stdin = pp.p.stdin
	}
	cmd.Stdout, cmd.Stderr = pp.p.stdout, pp.p.stderr
}

// CloseAfterStart closes taskd's copies of the process's ends (runc
// holds its own).
func (pp processPipes) CloseAfterStart() error {
	for _, f := range []*os.File{pp.p.stdin, pp.p.stdout, pp.p.stderr} {
		if f != nil {
			f.Close()
		}
	}
	return nil
}

// Close releases the pipes.
func (pp processPipes) Close() error {
	pp.p.close()
	return nil
}

// The process's ends are not for taskd to read or write.
func (processPipes) Stdin() io.WriteCloser { return nil }
func (processPipes) Stdout() io.ReadCloser { return nil }
func (processPipes) Stderr() io.ReadCloser { return nil }

var errProcessFinished = fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
