package conn

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestHeaderRoundTrip(t *testing.T) {
	var b bytes.Buffer
	if err := WriteHeader(&b, KindStream, "c1:init:stdout"); err != nil {
		t.Fatal(err)
	}
	if err := WriteHeader(&b, KindTTRPC, "ignored"); err != nil {
		t.Fatal(err)
	}
	k, n, err := ReadHeader(&b)
	if err != nil || k != KindStream || n != "c1:init:stdout" {
		t.Fatalf("got %q %q %v", k, n, err)
	}
	k, n, err = ReadHeader(&b)
	if err != nil || k != KindTTRPC || n != "" {
		t.Fatalf("got %q %q %v", k, n, err)
	}
}

func TestHeaderRejectsBadInput(t *testing.T) {
	for _, in := range [][]byte{
		{'X', 0},
		{'S', 3, '.', '.', '/'},
		{'S', 5, 'a', 'b'},
		{'T', 1, 'a'},
		{},
	} {
		if _, _, err := ReadHeader(bytes.NewReader(in)); err == nil {
			t.Errorf("accepted %q", in)
		}
	}
	if err := WriteHeader(io.Discard, KindStream, strings.Repeat("a", MaxNameLen+1)); err == nil {
		t.Error("wrote an over-long name")
	}
}

func TestStreamName(t *testing.T) {
	if n, err := StreamName("stream:abc"); err != nil || n != "abc" {
		t.Errorf("got %q %v", n, err)
	}
	if n, err := StreamName(""); err != nil || n != "" {
		t.Errorf("empty: got %q %v", n, err)
	}
	if _, err := StreamName("/run/fifo"); err == nil {
		t.Error("accepted a path")
	}
}

// pipeListener hands out one end of in-memory pipes.
type pipeListener struct{ ch chan net.Conn }

func (l pipeListener) Accept() (net.Conn, error) {
	c, ok := <-l.ch
	if !ok {
		return nil, net.ErrClosed
	}
	return c, nil
}
func (l pipeListener) Close() error   { return nil }
func (l pipeListener) Addr() net.Addr { return &net.UnixAddr{Name: "pipe"} }

func TestDemux(t *testing.T) {
	l := pipeListener{ch: make(chan net.Conn, 4)}
	d := NewDemux(l, KindTTRPC, nil)
	defer d.Close()
	dial := func(kind byte, name string) net.Conn {
		a, b := net.Pipe()
		l.ch <- b
		go WriteHeader(a, kind, name)
		return a
	}
	ctx := context.Background()
	// A stream asked for before it arrives.
	got := make(chan net.Conn)
	go func() {
		c, err := d.TakeStream(ctx, "s1", 5*time.Second)
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	host := dial(KindStream, "s1")
	guest := <-got
	go host.Write([]byte("hi"))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(guest, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("stream carried %q, %v", buf, err)
	}
	dial(KindTTRPC, "")
	if _, err := d.Listener().Accept(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.TakeStream(ctx, "never", 10*time.Millisecond); err == nil {
		t.Error("took a stream that never came")
	}
}
