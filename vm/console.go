package vm

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
)

// What the guest's console (ttyS0) may cost the host, whatever the guest
// writes: QEMU writes it to a socket the shim drains into a ring of the
// last bytes and into console.log, which is rotated to console.log.1 when
// it reaches ConsoleLogMaxBytes (so at most twice that on disk).
const (
	// ConsoleLogOldName is the previous console.log once it was rotated.
	ConsoleLogOldName = ConsoleLogName + ".1"
	// ConsoleLogMaxBytes bounds each of console.log and console.log.1
	// unless Config.ConsoleLogMaxBytes says otherwise.
	ConsoleLogMaxBytes = 1 << 20
	// ConsoleTailBytes is how much of the console is kept in memory.
	ConsoleTailBytes = 16 << 10
	consoleReadBytes = 32 << 10
	// consoleDrainWait bounds waiting for the console's last bytes once
	// QEMU has exited.
	consoleDrainWait = 2 * time.Second
)

// console drains the guest's console. QEMU holds the other end of a
// socket pair (a "socket" chardev on an inherited descriptor).
type console struct {
	conn net.Conn
	ring *ring
	log  *cappedFile
	done chan struct{}
}

// newConsole makes the socket pair: the returned file is QEMU's end, to be
// inherited and closed once QEMU has started. Run starts draining.
func newConsole(dir string, maxLogBytes int64) (*console, *os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("console socket pair: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "console"), os.NewFile(uintptr(fds[1]), "console-qemu")
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		theirs.Close()
		return nil, nil, fmt.Errorf("console socket: %w", err)
	}
	w := &cappedFile{path: filepath.Join(dir, ConsoleLogName), oldPath: filepath.Join(dir, ConsoleLogOldName), max: maxLogBytes}
	if err := w.rotate(); err != nil { // console.log exists from the start
		c.Close()
		theirs.Close()
		return nil, nil, fmt.Errorf("console log: %w", err)
	}
	return &console{conn: c, ring: newRing(ConsoleTailBytes), log: w, done: make(chan struct{})}, theirs, nil
}

// run copies the console until QEMU closes its end. It never stops
// reading on a file error: a console nobody reads would stall the guest.
func (c *console) run() {
	defer close(c.done)
	defer c.log.Close()
	buf := make([]byte, consoleReadBytes)
	logged := false
	for {
		n, err := c.conn.Read(buf)
		if n > 0 {
			c.ring.Write(buf[:n])
			if _, werr := c.log.Write(buf[:n]); werr != nil && !logged {
				log.L.WithError(werr).Warn("console log: keeping only the in-memory tail")
				logged = true
			}
		}
		if err != nil {
			return
		}
	}
}

// drained waits up to d for the console to end, as it does soon after
// QEMU exits.
func (c *console) drained(d time.Duration) {
	select {
	case <-c.done:
	case <-time.After(d):
	}
}

// stop waits a little for the console to end (QEMU must have exited),
// then closes it.
func (c *console) stop() {
	c.drained(consoleDrainWait)
	c.conn.Close()
	<-c.done
}

// ring keeps the last bytes written to it.
type ring struct {
	mu   sync.Mutex
	buf  []byte
	next int  // where the next byte goes
	full bool // the buffer has wrapped
}

func newRing(size int) *ring { return &ring{buf: make([]byte, size)} }

func (r *ring) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(p)
	if len(p) >= len(r.buf) {
		copy(r.buf, p[len(p)-len(r.buf):])
		r.next, r.full = 0, true
		return n, nil
	}
	c := copy(r.buf[r.next:], p)
	if c < len(p) {
		copy(r.buf, p[c:])
		r.full = true
	}
	r.next = (r.next + len(p)) % len(r.buf)
	if r.next == 0 && len(p) > 0 {
		r.full = true
	}
	return n, nil
}

// Tail returns a copy of at most the last max bytes, oldest first.
func (r *ring) Tail(max int) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	var all []byte
	if r.full {
		all = append(append(all, r.buf[r.next:]...), r.buf[:r.next]...)
	} else {
		all = append(all, r.buf[:r.next]...)
	}
	if max >= 0 && len(all) > max {
		all = all[len(all)-max:]
	}
	return all
}

// cappedFile writes to path until it holds max bytes, then renames it to
// oldPath (replacing what was there) and starts again.
type cappedFile struct {
	path, oldPath string
	max           int64

	f    *os.File
	size int64
	err  error // the first error: nothing more is written
}

func (w *cappedFile) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	written := 0
	for len(p) > 0 {
		if w.f == nil || w.size >= w.max {
			if err := w.rotate(); err != nil {
				w.err = err
				return written, err
			}
		}
		chunk := p[:min(int64(len(p)), w.max-w.size)]
		n, err := w.f.Write(chunk)
		written += n
		w.size += int64(n)
		if err != nil {
			w.err = err
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

func (w *cappedFile) rotate() error {
	if w.f != nil {
		w.f.Close()
		w.f = nil
		if err := os.Rename(w.path, w.oldPath); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	w.f, w.size = f, 0
	return nil
}

func (w *cappedFile) Close() error {
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

// ConsoleTail returns the last of what the guest wrote to its console (at
// most max bytes, and at most ConsoleTailBytes), also once the VM is gone.
func (i *Instance) ConsoleTail(max int) []byte {
	if i.console == nil || max <= 0 {
		return nil
	}
	return i.console.ring.Tail(min(max, ConsoleTailBytes))
}

// consoleTail is the end of the console, to explain a failed boot.
func (i *Instance) consoleTail() string {
	b := i.ConsoleTail(2048)
	if len(b) == 0 {
		return ""
	}
	return "; console: " + string(bytes.TrimSpace(b))
}
