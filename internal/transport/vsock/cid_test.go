package vsock

import (
	"testing"
	"time"
)

func TestAllocateLowestFreeAndExclusive(t *testing.T) {
	a := &CIDAllocator{Dir: t.TempDir(), Max: 10}
	l1, err := a.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer l1.Release()
	// A second allocator (as another shim would have) must not get the same CID.
	b := &CIDAllocator{Dir: a.Dir, Max: 10}
	l2, err := b.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Release()
	if l1.CID != FirstCID || l2.CID != FirstCID+1 {
		t.Fatalf("got CIDs %d and %d, want %d and %d", l1.CID, l2.CID, FirstCID, FirstCID+1)
	}
}

func TestReleasedCIDCoolsDown(t *testing.T) {
	a := &CIDAllocator{Dir: t.TempDir(), Cooldown: time.Hour, Max: 10}
	l1, err := a.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	first := l1.CID
	if err := l1.Release(); err != nil {
		t.Fatal(err)
	}
	l2, err := a.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Release()
	if l2.CID == first {
		t.Fatalf("CID %d reused within its cool-down", first)
	}
	// Without a cool-down it comes back at once.
	c := &CIDAllocator{Dir: a.Dir, Max: 10}
	l3, err := c.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer l3.Release()
	if l3.CID != first {
		t.Fatalf("got CID %d, want the released %d", l3.CID, first)
	}
}

func TestAllocatorExhausted(t *testing.T) {
	a := &CIDAllocator{Dir: t.TempDir(), Max: FirstCID}
	l, err := a.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	if _, err := a.Allocate(); err == nil {
		t.Fatal("allocated a CID beyond Max")
	}
}
