package lease

import (
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestAllocateLowestFreeAndExclusive(t *testing.T) {
	a := &Allocator{Dir: t.TempDir(), First: 3, Last: 10}
	l1, err := a.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer l1.Release()
	// A second allocator (as another shim would have) must not get the same number.
	b := &Allocator{Dir: a.Dir, First: 3, Last: 10}
	l2, err := b.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Release()
	if l1.N != 3 || l2.N != 4 {
		t.Fatalf("got %d and %d, want 3 and 4", l1.N, l2.N)
	}
}

func TestReleasedNumberCoolsDown(t *testing.T) {
	a := &Allocator{Dir: t.TempDir(), First: 1, Last: 10, Cooldown: time.Hour}
	l1, err := a.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	first := l1.N
	if err := l1.Release(); err != nil {
		t.Fatal(err)
	}
	l2, err := a.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Release()
	if l2.N == first {
		t.Fatalf("%d reused within its cool-down", first)
	}
	// Without a cool-down it comes back at once.
	c := &Allocator{Dir: a.Dir, First: 1, Last: 10}
	l3, err := c.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer l3.Release()
	if l3.N != first {
		t.Fatalf("got %d, want the released %d", l3.N, first)
	}
}

func TestExhausted(t *testing.T) {
	a := &Allocator{Dir: t.TempDir(), First: 7, Last: 7}
	l, err := a.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	if _, err := a.Allocate(); !errdefs.IsResourceExhausted(err) {
		t.Fatalf("allocate beyond the range: %v; want resource exhausted", err)
	}
	if _, err := (&Allocator{Dir: a.Dir, First: 9, Last: 8}).Allocate(); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("allocate from an empty range: %v; want invalid argument", err)
	}
}

// A child that inherited the lock file keeps the number taken after the
// allocating process released it, until the child exits.
func TestInheritedLeaseOutlivesRelease(t *testing.T) {
	a := &Allocator{Dir: t.TempDir(), First: 1, Last: 1}
	l, err := a.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "60")
	cmd.ExtraFiles = []*os.File{l.File()}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l.Release()
	if _, err := a.Allocate(); !errdefs.IsResourceExhausted(err) {
		t.Fatalf("allocate while a child holds the only number: %v; want resource exhausted", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	l2, err := a.Allocate()
	if err != nil {
		t.Fatalf("allocate after the child exited: %v", err)
	}
	l2.Release()
}
