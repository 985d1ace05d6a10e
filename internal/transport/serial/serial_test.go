package serial

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fakePort stands in for QEMU's virtio-serial port and its Unix socket
// chardev, with the port's two quirks: what the host sends before the
// guest has the port open (its first read or write) is lost, and a guest
// read returns 0 bytes while no host is connected. It logs the traffic
// for failures.
type fakePort struct {
	l net.Listener

	mu       sync.Mutex
	log      []string
	cond     *sync.Cond
	host     net.Conn
	opened   bool
	inbound  []byte
	deadline time.Time
}

func newFakePort(t *testing.T) (*fakePort, string) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	p := &fakePort{l: l}
	p.cond = sync.NewCond(&p.mu)
	t.Cleanup(func() { l.Close() })
	go p.accept()
	return p, path
}

func (p *fakePort) accept() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.host = c
		p.cond.Broadcast()
		p.mu.Unlock()
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			p.mu.Lock()
			if p.opened {
				p.inbound = append(p.inbound, buf[:n]...)
				p.log = append(p.log, fmt.Sprintf("h->g %q", buf[:n]))
			} else {
				p.log = append(p.log, fmt.Sprintf("h->g dropped %q", buf[:n]))
			}
			if err != nil {
				p.host = nil
				p.inbound = nil
			}
			p.cond.Broadcast()
			p.mu.Unlock()
			if err != nil {
				break
			}
		}
	}
}

func (p *fakePort) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.opened = true
	for {
		if len(p.inbound) > 0 {
			n := copy(b, p.inbound)
			p.inbound = p.inbound[n:]
			return n, nil
		}
		if p.host == nil {
			return 0, nil
		}
		if !p.deadline.IsZero() && time.Now().After(p.deadline) {
			return 0, os.ErrDeadlineExceeded
		}
		if !p.deadline.IsZero() {
			d := time.Until(p.deadline)
			go func() { time.Sleep(d); p.mu.Lock(); p.cond.Broadcast(); p.mu.Unlock() }()
		}
		p.cond.Wait()
	}
}

func (p *fakePort) Write(b []byte) (int, error) {
	p.mu.Lock()
	p.opened = true // a guest that writes has the port open
	h := p.host
	p.log = append(p.log, fmt.Sprintf("g->h %v %q", h != nil, b))
	p.mu.Unlock()
	if h == nil {
		return len(b), nil // nobody listening: dropped
	}
	return h.Write(b)
}

func (p *fakePort) SetReadDeadline(t time.Time) error {
	p.mu.Lock()
	p.deadline = t
	p.cond.Broadcast()
	p.mu.Unlock()
	return nil
}

func (p *fakePort) SetWriteDeadline(time.Time) error { return nil }

// echo serves the guest side: every accepted stream echoes what it reads.
func echo(l *Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() { io.Copy(c, c); c.Close() }()
	}
}

func roundTrip(t *testing.T, h *Host, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("%s: echoed %q, %v", msg, buf, err)
	}
}

func TestHandshakeStreamsAndReconnect(t *testing.T) {
	port, path := newFakePort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// The host connects before the guest opens the port: its first pings
	// are lost, and the handshake still completes.
	hostC := make(chan *Host, 1)
	go func() {
		h, err := Connect(ctx, path)
		if err != nil {
			t.Error(err)
		}
		hostC <- h
	}()
	time.Sleep(50 * time.Millisecond) // the guest boots later than the host connects
	l := Listen(port)
	defer l.Close()
	go echo(l)
	h := <-hostC
	if h == nil {
		t.FailNow()
	}
	t.Cleanup(func() {
		if t.Failed() {
			port.mu.Lock()
			for _, l := range port.log {
				t.Log(l)
			}
			port.mu.Unlock()
		}
	})
	roundTrip(t, h, "one")
	roundTrip(t, h, "two") // streams are independent

	// The host goes away and a new one (a restarted shim) comes.
	h.Close()
	h2, err := Connect(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	roundTrip(t, h2, "after reconnect")
}

func TestConnectGivesUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, path := newFakePort(t) // nobody ever opens the guest side
	if _, err := Connect(ctx, path); err == nil {
		t.Error("handshake with no guest succeeded")
	}
}

func TestFindPort(t *testing.T) {
	sys := t.TempDir()
	dir := filepath.Join(sys, "class", "virtio-ports", "vport1p1")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "name"), []byte(PortName+"\n"), 0o644)
	if p, err := FindPort(sys, PortName); err != nil || p != "/dev/vport1p1" {
		t.Errorf("got %q %v", p, err)
	}
	if _, err := FindPort(sys, "other"); err == nil {
		t.Error("found a port that is not there")
	}
}
