package serial

import (
	"bytes"
	"errors"
	"math/rand"
	"runtime"
	"sync"
	"testing"
	"time"
)

// recorder is a connection that keeps each write apart.
type recorder struct {
	mu     sync.Mutex
	writes [][]byte
	err    error
	wrote  chan struct{}
}

func newRecorder() *recorder { return &recorder{wrote: make(chan struct{}, 1)} }

func (r *recorder) Read([]byte) (int, error) { select {} }
func (r *recorder) Close() error             { return nil }

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return 0, r.err
	}
	r.writes = append(r.writes, bytes.Clone(p))
	select {
	case r.wrote <- struct{}{}:
	default: // (one pending notice is enough)
	}
	return len(p), nil
}

func (r *recorder) all() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Join(r.writes, nil)
}

func TestBatchConnKeepsOrder(t *testing.T) {
	rec := newRecorder()
	b := newBatchConn(rec)
	defer b.Close()
	var want []byte
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 500; i++ {
		n := 12
		if rng.Intn(3) == 0 {
			n = rng.Intn(100 << 10)
		}
		p := make([]byte, n)
		rng.Read(p)
		if _, err := b.Write(p); err != nil {
			t.Fatal(err)
		}
		want = append(want, p...)
	}
	deadline := time.After(10 * time.Second)
	for !bytes.Equal(rec.all(), want) {
		select {
		case <-rec.wrote:
		case <-deadline:
			t.Fatalf("%d bytes arrived of %d, or out of order", len(rec.all()), len(want))
		}
	}
}

func TestBatchConnFlushesALoneSmallWrite(t *testing.T) {
	rec := newRecorder()
	b := newBatchConn(rec)
	defer b.Close()
	b.Write([]byte("window update"))
	select {
	case <-rec.wrote:
	case <-time.After(10 * time.Second):
		t.Fatal("a small write was never written")
	}
	if got := string(rec.all()); got != "window update" {
		t.Fatalf("wrote %q", got)
	}
}

func TestBatchConnJoinsHeaderAndBody(t *testing.T) {
	// As in the guest: one P, so the flusher runs only once the writer
	// waits.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	rec := newRecorder()
	b := newBatchConn(rec)
	defer b.Close()
	header, body := bytes.Repeat([]byte{'h'}, 12), bytes.Repeat([]byte{'b'}, 40<<10)
	b.Write(header)
	b.Write(body)
	if len(rec.writes) != 2 || len(rec.writes[0]) != portChunk || !bytes.Equal(rec.all(), append(header, body...)) {
		t.Fatalf("writes of %d bytes; want the header and the body's first %d bytes in one, then the rest", lens(rec.writes), portChunk-12)
	}
}

func lens(w [][]byte) []int {
	var n []int
	for _, p := range w {
		n = append(n, len(p))
	}
	return n
}

func TestBatchConnReportsAWriteError(t *testing.T) {
	rec := newRecorder()
	rec.err = errors.New("port gone")
	b := newBatchConn(rec)
	defer b.Close()
	if _, err := b.Write([]byte("small")); err != nil {
		t.Fatalf("a held write failed at once: %v", err)
	}
	if _, err := b.Write(make([]byte, 1024)); err != rec.err {
		t.Fatalf("got %v, want the connection's error", err)
	}
	// The error is kept: even a write that would be held returns it.
	if _, err := b.Write([]byte("next")); err != rec.err {
		t.Fatalf("got %v, want the connection's error", err)
	}
}
