package stdio

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/fifo"
)

// fakeGuest hands out in-memory connections standing in for the guest's
// streams (the transport is not what this package does).
type fakeGuest struct {
	mu    sync.Mutex
	conns map[string]net.Conn
}

func (g *fakeGuest) dial(ctx context.Context, name string) (net.Conn, error) {
	a, b := net.Pipe()
	g.mu.Lock()
	g.conns[name] = b
	g.mu.Unlock()
	return a, nil
}

func (g *fakeGuest) conn(name string) net.Conn {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.conns[name]
}

func TestFifosCarryOutputAndStdin(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	paths := map[string]string{}
	for _, n := range []string{"in", "out", "err"} {
		paths[n] = filepath.Join(dir, n)
		if err := syscall.Mkfifo(paths[n], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// containerd's side of the fifos.
	outR, err := fifo.OpenFifo(ctx, paths["out"], syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	errR, _ := fifo.OpenFifo(ctx, paths["err"], syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	inW, _ := fifo.OpenFifo(ctx, paths["in"], syscall.O_WRONLY|syscall.O_NONBLOCK, 0)

	g := &fakeGuest{conns: map[string]net.Conn{}}
	p, guest, err := Open(ctx, "default", "c1", Stdio{Stdin: paths["in"], Stdout: paths["out"], Stderr: paths["err"]}, "s1", g.dial)
	if err != nil {
		t.Fatal(err)
	}
	if guest.Stdout != "stream:s1-o" || guest.Stderr != "stream:s1-e" || guest.Stdin != "stream:s1-i" {
		t.Fatalf("guest fields %+v", guest)
	}
	go func() {
		g.conn("s1-o").Write([]byte("out\n"))
		g.conn("s1-o").Close()
		g.conn("s1-e").Write([]byte("err\n"))
		g.conn("s1-e").Close()
	}()
	buf := make([]byte, 4)
	if _, err := io.ReadFull(outR, buf); err != nil || string(buf) != "out\n" {
		t.Fatalf("stdout %q %v", buf, err)
	}
	if _, err := io.ReadFull(errR, buf); err != nil || string(buf) != "err\n" {
		t.Fatalf("stderr %q %v", buf, err)
	}
	if !p.Wait(5 * time.Second) {
		t.Fatal("outputs not drained after the guest closed them")
	}
	inW.Write([]byte("ping"))
	if _, err := io.ReadFull(g.conn("s1-i"), buf); err != nil || string(buf) != "ping" {
		t.Fatalf("stdin %q %v", buf, err)
	}
	// The client detaches and comes back: stdin stays open (the shim holds
	// the fifo), and what it writes then arrives.
	inW.Close()
	inW, err = fifo.OpenFifo(ctx, paths["in"], syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	inW.Write([]byte("pong"))
	if _, err := io.ReadFull(g.conn("s1-i"), buf); err != nil || string(buf) != "pong" {
		t.Fatalf("stdin after reattaching %q %v", buf, err)
	}
	// CloseIO, then the client's last bytes and its close: the bytes
	// arrive, then end of file.
	p.CloseStdin()
	inW.Write([]byte("last"))
	inW.Close()
	if b, err := io.ReadAll(g.conn("s1-i")); err != nil || string(b) != "last" {
		t.Errorf("stdin after CloseIO: %q %v, want the last bytes then end of file", b, err)
	}
	p.Close()
}

func TestFileURI(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "sub", "log.txt")
	g := &fakeGuest{conns: map[string]net.Conn{}}
	p, _, err := Open(context.Background(), "default", "c1", Stdio{Stdout: "file://" + log, Stderr: "file://" + log}, "s2", g.dial)
	if err != nil {
		t.Fatal(err)
	}
	g.conn("s2-o").Write([]byte("a\n"))
	g.conn("s2-o").Close()
	g.conn("s2-e").Close()
	if !p.Wait(5 * time.Second) {
		t.Fatal("not drained")
	}
	p.Close()
	if b, _ := os.ReadFile(log); string(b) != "a\n" {
		t.Errorf("log file holds %q", b)
	}
}

func TestUnknownScheme(t *testing.T) {
	g := &fakeGuest{conns: map[string]net.Conn{}}
	if _, _, err := Open(context.Background(), "default", "c1", Stdio{Stdout: "s3://bucket/x"}, "s3", g.dial); err == nil {
		t.Error("accepted an unknown URI scheme")
	}
}
