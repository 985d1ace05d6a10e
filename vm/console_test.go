package vm

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestRingKeepsTheLastBytes(t *testing.T) {
	r := newRing(8)
	if got := r.Tail(100); len(got) != 0 {
		t.Errorf("empty ring: %q", got)
	}
	r.Write([]byte("abc"))
	if got := string(r.Tail(100)); got != "abc" {
		t.Errorf("got %q", got)
	}
	r.Write([]byte("defgh")) // exactly full
	if got := string(r.Tail(100)); got != "abcdefgh" {
		t.Errorf("full: got %q", got)
	}
	r.Write([]byte("ij")) // wraps
	if got := string(r.Tail(100)); got != "cdefghij" {
		t.Errorf("wrapped: got %q", got)
	}
	if got := string(r.Tail(3)); got != "hij" {
		t.Errorf("tail 3: got %q", got)
	}
	r.Write([]byte("0123456789xyz")) // larger than the ring
	if got := string(r.Tail(100)); got != "56789xyz" {
		t.Errorf("big write: got %q", got)
	}
	// Against a plain buffer, with writes of every size.
	r = newRing(64)
	var all []byte
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		p := make([]byte, rnd.IntN(100))
		for j := range p {
			p[j] = byte(rnd.IntN(256))
		}
		r.Write(p)
		all = append(all, p...)
		want := all[max(0, len(all)-64):]
		if got := r.Tail(64); !bytes.Equal(got, want) {
			t.Fatalf("after %d bytes: tail differs", len(all))
		}
	}
}

func TestCappedFileRotates(t *testing.T) {
	dir := t.TempDir()
	w := &cappedFile{path: filepath.Join(dir, "log"), oldPath: filepath.Join(dir, "log.1"), max: 100}
	var all []byte
	rnd := rand.New(rand.NewPCG(3, 4))
	for range 200 {
		p := bytes.Repeat([]byte{byte('a' + rnd.IntN(26))}, rnd.IntN(250))
		if n, err := w.Write(p); err != nil || n != len(p) {
			t.Fatalf("write: %d, %v", n, err)
		}
		all = append(all, p...)
		cur, _ := os.ReadFile(w.path)
		old, _ := os.ReadFile(w.oldPath)
		if len(cur) > 100 || len(old) > 100 {
			t.Fatalf("files of %d and %d bytes, cap 100", len(cur), len(old))
		}
		// Together they are the end of what was written.
		if both := append(old, cur...); !bytes.HasSuffix(all, both) {
			t.Fatalf("the files are not the end of the stream")
		}
	}
	w.Close()
}

// The guest writes far more than the caps: the host keeps a bounded
// amount, and the tail is the end of what was written.
func TestConsoleIsBounded(t *testing.T) {
	dir := t.TempDir()
	c, qemuEnd, err := newConsole(dir, ConsoleLogMaxBytes)
	if err != nil {
		t.Fatal(err)
	}
	i := &Instance{console: c}
	go c.run()
	var last []byte
	line := []byte("[    1.234567] the guest says something rather long on its console\r\n")
	total := 0
	for total < 5*ConsoleLogMaxBytes {
		n, err := qemuEnd.Write(line)
		if err != nil {
			t.Fatal(err)
		}
		total += n
	}
	last = []byte("the very last words")
	if _, err := qemuEnd.Write(last); err != nil {
		t.Fatal(err)
	}
	qemuEnd.Close() // QEMU exits
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the console did not end when QEMU's end closed")
	}
	for _, name := range []string{ConsoleLogName, ConsoleLogOldName} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > ConsoleLogMaxBytes {
			t.Errorf("%s: %d bytes, cap %d", name, fi.Size(), ConsoleLogMaxBytes)
		}
	}
	tail := i.ConsoleTail(1 << 30)
	if len(tail) != ConsoleTailBytes || !bytes.HasSuffix(tail, last) {
		t.Errorf("tail of %d bytes, ending %q", len(tail), tail[max(0, len(tail)-30):])
	}
	f, _ := os.Open(filepath.Join(dir, ConsoleLogName))
	defer f.Close()
	f.Seek(-int64(len(last)), io.SeekEnd)
	end, _ := io.ReadAll(f)
	if !bytes.Equal(end, last) {
		t.Errorf("console.log ends %q", end)
	}
	c.stop()
}
