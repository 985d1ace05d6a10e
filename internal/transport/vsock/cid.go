package vsock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// FirstCID is the lowest CID a guest may have (0-2 are reserved).
const FirstCID = 3

// CIDAllocator hands out guest CIDs. A CID is held by an flock on a file in
// Dir, so allocators in different processes exclude each other and a crashed
// holder's CID comes free with its process. A CID whose file changed less
// than Cooldown ago is skipped, so a CID is not reused while a stale
// connection to the old guest may still linger.
type CIDAllocator struct {
	Dir      string
	Cooldown time.Duration
	// Max is the highest CID tried; 0 means 65535.
	Max uint32
}

// Lease is one allocated CID; Release gives it back.
type Lease struct {
	CID  uint32
	file *os.File
}

// Allocate takes the lowest free CID.
func (a *CIDAllocator) Allocate() (*Lease, error) {
	if err := os.MkdirAll(a.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create CID directory: %w", err)
	}
	max := a.Max
	if max == 0 {
		max = 65535
	}
	now := time.Now()
	for cid := uint32(FirstCID); cid <= max; cid++ {
		path := filepath.Join(a.Dir, strconv.FormatUint(uint64(cid), 10))
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("open CID lock %s: %w", path, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				continue
			}
			return nil, fmt.Errorf("lock CID %d: %w", cid, err)
		}
		st, err := f.Stat()
		if err != nil {
			unix.Flock(int(f.Fd()), unix.LOCK_UN)
			f.Close()
			return nil, fmt.Errorf("stat CID lock %s: %w", path, err)
		}
		if st.Size() > 0 && now.Sub(st.ModTime()) < a.Cooldown {
			// Released (or its holder died) too recently.
			unix.Flock(int(f.Fd()), unix.LOCK_UN)
			f.Close()
			continue
		}
		if err := f.Truncate(0); err == nil {
			f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		}
		return &Lease{CID: cid, file: f}, nil
	}
	return nil, fmt.Errorf("no free vsock CID between %d and %d", FirstCID, max)
}

// Release gives the CID back; its cool-down starts now.
func (l *Lease) Release() error {
	if l.file == nil {
		return nil
	}
	now := time.Now()
	os.Chtimes(l.file.Name(), now, now)
	l.file.WriteAt([]byte("released\n"), 0)
	err := l.file.Close() // drops the flock
	l.file = nil
	return err
}
