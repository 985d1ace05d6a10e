package vsock

import "testing"

// CIDs start above the reserved 0-2 and end at Max.
func TestAllocatorRange(t *testing.T) {
	a := &CIDAllocator{Dir: t.TempDir(), Max: FirstCID}
	l, err := a.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	if l.CID != FirstCID {
		t.Fatalf("got CID %d, want %d", l.CID, FirstCID)
	}
	if _, err := a.Allocate(); err == nil {
		t.Fatal("allocated a CID beyond Max")
	}
}
