package serial

import (
	"io"
	"net"
	"sync"
)

// smallWrite is the largest write batchConn holds back: yamux's 12-byte
// frame headers, window updates and small messages.
const smallWrite = 512

// maxHeld bounds what batchConn holds back before writing synchronously.
const maxHeld = 64 << 10

// portChunk is the most one write to a virtio-serial port carries in the
// guest (the driver cuts a write at 32 KiB); a held header and the start
// of the body after it are joined up to it.
const portChunk = 32 << 10

// batchConn is the connection as a yamux session sees it. yamux writes a
// frame's header and its body in two writes, and each write to the port
// is a buffer and a notification that an emulated guest pays dearly for.
// So small writes are held back: a larger write takes them along in its
// first system call, and otherwise a flusher writes them out as soon as
// it runs (which, on one vCPU, is after the writer has queued what it had
// at hand). Writes reach the connection in the order made. An error of a
// held write is returned by the next write.
type batchConn struct {
	io.ReadWriteCloser

	// writeMu orders writes to the connection.
	writeMu sync.Mutex
	scratch []byte

	mu     sync.Mutex
	cond   *sync.Cond
	held   []byte
	err    error
	closed bool
}

func newBatchConn(c io.ReadWriteCloser) *batchConn {
	b := &batchConn{ReadWriteCloser: c, scratch: make([]byte, 0, portChunk)}
	b.cond = sync.NewCond(&b.mu)
	go b.flush()
	return b
}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	if b.err != nil {
		err := b.err
		b.mu.Unlock()
		return 0, err
	}
	if len(p) <= smallWrite && len(b.held)+len(p) <= maxHeld {
		b.held = append(b.held, p...)
		b.cond.Signal()
		b.mu.Unlock()
		return len(p), nil
	}
	b.mu.Unlock()

	b.writeMu.Lock()
	defer b.writeMu.Unlock()
	held := b.take()
	first := p
	if len(held) > 0 {
		n := min(len(p), max(portChunk-len(held), 0))
		b.scratch = append(append(b.scratch[:0], held...), p[:n]...)
		first = b.scratch
		p = p[n:]
	} else {
		p = nil
	}
	if err := b.write(first); err != nil {
		return 0, err
	}
	if len(p) > 0 {
		if err := b.write(p); err != nil {
			return 0, err
		}
	}
	return len(first) - len(held) + len(p), nil
}

// take hands over what is held.
func (b *batchConn) take() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	held := b.held
	b.held = nil
	return held
}

// write writes to the connection (writeMu held) and records an error.
func (b *batchConn) write(p []byte) error {
	if _, err := b.ReadWriteCloser.Write(p); err != nil {
		b.mu.Lock()
		if b.err == nil {
			b.err = err
		}
		b.mu.Unlock()
		return err
	}
	return nil
}

// flush writes out what is held until Close.
func (b *batchConn) flush() {
	for {
		b.mu.Lock()
		for len(b.held) == 0 && !b.closed {
			b.cond.Wait()
		}
		closed := b.closed
		b.mu.Unlock()
		if closed {
			return
		}
		b.writeMu.Lock()
		if held := b.take(); len(held) > 0 {
			b.write(held)
		}
		b.writeMu.Unlock()
	}
}

// Close drops what is held, stops the flusher (a write of its in
// progress finishes on its own) and closes the connection.
func (b *batchConn) Close() error {
	b.mu.Lock()
	b.closed = true
	b.held = nil
	b.cond.Broadcast()
	b.mu.Unlock()
	return b.ReadWriteCloser.Close()
}

// LocalAddr and RemoteAddr are the connection's, where it has them (yamux
// passes them on to its streams).
func (b *batchConn) LocalAddr() net.Addr {
	if c, ok := b.ReadWriteCloser.(interface{ LocalAddr() net.Addr }); ok {
		return c.LocalAddr()
	}
	return portAddr{}
}

func (b *batchConn) RemoteAddr() net.Addr {
	if c, ok := b.ReadWriteCloser.(interface{ RemoteAddr() net.Addr }); ok {
		return c.RemoteAddr()
	}
	return portAddr{}
}
