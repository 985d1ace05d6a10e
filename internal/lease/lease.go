// Package lease hands out numbers from a range (vsock CIDs, user IDs) so
// that concurrent processes on one host never hold the same one. A number
// is held by an flock on a file named after it in a directory: allocators
// in different processes exclude each other, and a holder's number comes
// free when the last descriptor of its lock file closes, whoever holds it
// (a process that inherits the descriptor keeps the number taken).
package lease

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Allocator hands out the numbers First..Last. A number whose lock file
// changed less than Cooldown ago is skipped, so that it is not reused while
// something that knew its previous holder may still linger.
type Allocator struct {
	Dir         string
	First, Last uint32
	Cooldown    time.Duration
}

// Lease is one allocated number; Release gives it back.
type Lease struct {
	N    uint32
	file *os.File
}

// Allocate takes the lowest free number.
func (a *Allocator) Allocate() (*Lease, error) {
	if a.Last < a.First {
		return nil, fmt.Errorf("lease range %d-%d is empty: %w", a.First, a.Last, errdefs.ErrInvalidArgument)
	}
	if err := os.MkdirAll(a.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create lease directory: %w", err)
	}
	now := time.Now()
	for n := uint64(a.First); n <= uint64(a.Last); n++ {
		path := filepath.Join(a.Dir, strconv.FormatUint(n, 10))
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("open lease %s: %w", path, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				continue
			}
			return nil, fmt.Errorf("lock lease %s: %w", path, err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("stat lease %s: %w", path, err)
		}
		if st.Size() > 0 && now.Sub(st.ModTime()) < a.Cooldown {
			// Released (or its holder died) too recently.
			f.Close()
			continue
		}
		if err := f.Truncate(0); err == nil {
			f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		}
		return &Lease{N: uint32(n), file: f}, nil
	}
	return nil, fmt.Errorf("no free number between %d and %d in %s: %w", a.First, a.Last, a.Dir, errdefs.ErrResourceExhausted)
}

// File is the lock file's descriptor: a child that inherits it holds the
// number for as long as it lives, even past Release.
func (l *Lease) File() *os.File { return l.file }

// Release gives the number back (once no child holds the lock file open);
// its cool-down starts now.
func (l *Lease) Release() error {
	if l.file == nil {
		return nil
	}
	now := time.Now()
	os.Chtimes(l.file.Name(), now, now)
	l.file.WriteAt([]byte("released\n"), 0)
	err := l.file.Close() // drops the flock unless a child shares it
	l.file = nil
	return err
}
