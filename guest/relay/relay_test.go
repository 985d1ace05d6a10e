package relay

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qemu-shim/qemu-shim/internal/transport/conn"
)

// startTrue starts /bin/true as a stand-in taskd and reaps it.
func startTrue(t *testing.T, r *Relay) {
	t.Helper()
	bin := "/bin/true"
	if _, err := os.Stat(bin); err != nil {
		t.Skip("no /bin/true")
	}
	if err := r.Start(bin, "/nonexistent/runc", nil); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	pid := r.pid
	r.mu.Unlock()
	if !r.IsTaskd(pid) || r.IsTaskd(pid+1) || r.IsTaskd(0) {
		t.Fatalf("IsTaskd does not recognise pid %d alone", pid)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
}

// listeningTaskd returns a relay whose (stand-in) taskd has started, and
// the listener on its socket, where the relay's connections arrive.
func listeningTaskd(t *testing.T) (*Relay, net.Listener) {
	t.Helper()
	r := New(filepath.Join(t.TempDir(), "taskd.sock"))
	l, err := net.Listen("unix", r.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	startTrue(t, r)
	return r, l
}

// pair returns both ends of a real Unix socket connection.
func pair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	var cs [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "pair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		cs[i] = c
	}
	t.Cleanup(func() { cs[0].Close(); cs[1].Close() })
	return cs[0], cs[1]
}

func TestForwardRelaysHeaderAndBytes(t *testing.T) {
	r, l := listeningTaskd(t)

	host, agentEnd := pair(t)
	r.Forward(conn.KindTask, "", agentEnd)
	d, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	kind, name, err := conn.ReadHeader(d)
	if err != nil || kind != conn.KindTask || name != "" {
		t.Fatalf("header: kind %d name %q err %v", kind, name, err)
	}
	pingPong(t, host, d)
	buf := make([]byte, 4)
	// taskd ending its side ends the host's.
	d.Close()
	if n, err := host.Read(buf); err != io.EOF {
		t.Fatalf("host read %d, %v after taskd closed; want EOF", n, err)
	}
}

func TestForwardDropsConnection(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start bool // taskd started, but nothing listens
	}{
		{"taskd never started", false},
		{"taskd not listening", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := New(filepath.Join(t.TempDir(), "taskd.sock"))
			r.Wait = 50 * time.Millisecond
			if tc.start {
				startTrue(t, r)
			}
			host, agentEnd := pair(t)
			host.SetReadDeadline(time.Now().Add(10 * time.Second))
			r.Forward(conn.KindStream, "stdout", agentEnd)
			if n, err := host.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("read %d, %v; want EOF once the relay gives up", n, err)
			}
		})
	}
}

// streamToTaskd forwards a stream and returns taskd's end, its header read.
func streamToTaskd(t *testing.T) (host, ctl net.Conn) {
	t.Helper()
	r, l := listeningTaskd(t)
	host, agentEnd := pair(t)
	host.SetDeadline(time.Now().Add(10 * time.Second))
	r.Forward(conn.KindStream, "p-o", agentEnd)
	d, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	d.SetDeadline(time.Now().Add(10 * time.Second))
	if kind, name, err := conn.ReadHeader(d); err != nil || kind != conn.KindStream || name != "p-o" {
		t.Fatalf("header: kind %d name %q err %v", kind, name, err)
	}
	return host, d
}

func TestStreamOutputIsAPipeDrainedBeforeTheControlCloses(t *testing.T) {
	host, ctl := streamToTaskd(t)
	w, err := OpenPipe(ctl, PipeWrite, false)
	if err != nil {
		t.Fatal(err)
	}
	// Written and closed before the host reads anything: all of it
	// reaches the host, then the end of file, then the control ends.
	want := bytes.Repeat([]byte("0123456789abcdef"), 8192)
	go func() {
		w.Write(want)
		w.Close()
	}()
	got, err := io.ReadAll(host)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("host read %d bytes (err %v), want %d", len(got), err, len(want))
	}
	if n, err := ctl.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("control read %d, %v; want EOF once drained", n, err)
	}
}

func TestStreamInputIsAPipe(t *testing.T) {
	host, ctl := streamToTaskd(t)
	r, err := OpenPipe(ctl, PipeRead, false)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := host.Write([]byte("stdin bytes")); err != nil {
		t.Fatal(err)
	}
	host.(*net.UnixConn).CloseWrite()
	got, err := io.ReadAll(r)
	if err != nil || string(got) != "stdin bytes" {
		t.Fatalf("pipe read %q, %v", got, err)
	}
}

func TestClosingTheControlEndsStdin(t *testing.T) {
	host, ctl := streamToTaskd(t)
	r, err := OpenPipe(ctl, PipeRead, true) // (non-blocking: a deadline applies)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctl.Close()
	r.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := r.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("pipe read %d, %v after the control closed; want EOF", n, err)
	}
	if n, err := host.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("host read %d, %v after the control closed; want EOF", n, err)
	}
}

func TestOpenPipeWantsAUnixConnection(t *testing.T) {
	a, _ := net.Pipe()
	if _, err := OpenPipe(a, PipeRead, false); err == nil {
		t.Fatal("OpenPipe over a net.Pipe succeeded")
	}
}

// pingPong sends bytes from the host to taskd and back.
func pingPong(t *testing.T, host, taskd net.Conn) {
	t.Helper()
	if _, err := host.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(taskd, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("taskd read %q, %v", buf, err)
	}
	if _, err := taskd.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(host, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("host read %q, %v", buf, err)
	}
}

// accept takes taskd's next connection and reads its header.
func accept(t *testing.T, l net.Listener) (c net.Conn, kind byte, name string) {
	t.Helper()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if kind, name, err = conn.ReadHeader(c); err != nil {
		t.Fatal(err)
	}
	return c, kind, name
}

func TestPreconnectCarriesTheNextConnectionOfItsKind(t *testing.T) {
	r, l := listeningTaskd(t)
	if err := r.Preconnect(conn.KindTask, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// taskd accepted the connection made ahead, with its header.
	early, kind, name := accept(t, l)
	if kind != conn.KindTask || name != "" {
		t.Fatalf("header: kind %d name %q", kind, name)
	}

	// A stream is not of its kind: it gets a connection of its own.
	_, streamEnd := pair(t)
	r.Forward(conn.KindStream, "p-o", streamEnd)
	if _, kind, name := accept(t, l); kind != conn.KindStream || name != "p-o" {
		t.Fatalf("stream header: kind %d name %q", kind, name)
	}

	// The host's task connection is passed on the early one, both ways.
	host, agentEnd := pair(t)
	host.SetDeadline(time.Now().Add(10 * time.Second))
	r.Forward(conn.KindTask, "", agentEnd)
	pingPong(t, host, early)

	// It is used once: the next task connection is dialled.
	_, nextEnd := pair(t)
	r.Forward(conn.KindTask, "", nextEnd)
	if _, kind, _ := accept(t, l); kind != conn.KindTask {
		t.Fatalf("next header: kind %d", kind)
	}
}

func TestPreconnectGivesUpWhenTaskdNeverStarts(t *testing.T) {
	r := New(filepath.Join(t.TempDir(), "taskd.sock"))
	if err := r.Preconnect(conn.KindTask, 20*time.Millisecond); err == nil {
		t.Fatal("Preconnect returned no error though taskd never started")
	}
}

func TestPreconnectRefusesStreams(t *testing.T) {
	r := New(filepath.Join(t.TempDir(), "taskd.sock"))
	if err := r.Preconnect(conn.KindStream, time.Second); err == nil {
		t.Fatal("Preconnect took a stream, which is named by its header")
	}
}
