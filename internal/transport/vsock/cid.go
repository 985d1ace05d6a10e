package vsock

import (
	"fmt"
	"time"

	"github.com/qemu-shim/qemu-shim/internal/lease"
)

// FirstCID is the lowest CID a guest may have (0-2 are reserved).
const FirstCID = 3

// CIDAllocator hands out guest CIDs, as leases in Dir (see package lease).
// A CID released less than Cooldown ago is skipped, so a CID is not reused
// while a stale connection to the old guest may still linger.
type CIDAllocator struct {
	Dir      string
	Cooldown time.Duration
	// Max is the highest CID tried; 0 means 65535.
	Max uint32
}

// Lease is one allocated CID; Release gives it back.
type Lease struct {
	CID uint32
	*lease.Lease
}

// Allocate takes the lowest free CID.
func (a *CIDAllocator) Allocate() (*Lease, error) {
	max := a.Max
	if max == 0 {
		max = 65535
	}
	l, err := (&lease.Allocator{Dir: a.Dir, First: FirstCID, Last: max, Cooldown: a.Cooldown}).Allocate()
	if err != nil {
		return nil, fmt.Errorf("vsock CID: %w", err)
	}
	return &Lease{CID: l.N, Lease: l}, nil
}
