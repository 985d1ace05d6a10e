// Package memtrim gives back memory that a long-lived, mostly idle Go
// process holds only because of what it once did: the Go heap it freed,
// and the pages of its own executable that starting up touched (every
// package's init runs, and each page fault maps its neighbours too) but
// that waiting does not use. Dropped executable pages stay in the page
// cache and come back on the next use at the cost of a minor fault.
package memtrim

import (
	"bufio"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Trim returns the Go heap's free memory to the system and unmaps the
// executable's read-only pages (code and read-only data: never written,
// so the file holds them as they were) from this process.
func Trim() error {
	debug.FreeOSMemory()
	// The kernel names the executable here as it does in smaps (with
	// " (deleted)" once the file is replaced: its mappings stay valid).
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return fmt.Errorf("trim: %w", err)
	}
	ranges, err := readOnlyMappings("/proc/self/smaps", exe)
	if err != nil {
		return fmt.Errorf("trim: %w", err)
	}
	for _, r := range ranges {
		// Random access: the pages fault back one at a time, not with
		// their neighbours.
		for _, advice := range []int{unix.MADV_RANDOM, unix.MADV_DONTNEED} {
			if _, _, errno := unix.Syscall(unix.SYS_MADVISE, r[0], r[1]-r[0], uintptr(advice)); errno != 0 {
				return fmt.Errorf("trim: madvise %#x-%#x: %w", r[0], r[1], errno)
			}
		}
	}
	return nil
}

// readOnlyMappings lists the [start, end) ranges of path's private
// mappings without write permission in an smaps file, leaving out any that
// holds a page this process wrote (a dynamic loader's relocations, made
// read-only afterwards): dropping that page would undo the write.
func readOnlyMappings(smaps, path string) ([][2]uintptr, error) {
	f, err := os.Open(smaps)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var (
		out     [][2]uintptr
		cur     [2]uintptr
		want    bool
		written bool
	)
	flush := func() {
		if want && !written {
			out = append(out, cur)
		}
		want, written = false, false
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if strings.HasSuffix(fields[0], ":") {
			// A field of the current mapping, such as "Anonymous: 4 kB".
			if fields[0] == "Anonymous:" && len(fields) > 1 && fields[1] != "0" {
				written = true
			}
			continue
		}
		// A mapping: start-end perms offset dev inode [path].
		flush()
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok || len(fields) < 5 {
			return nil, fmt.Errorf("%s: bad line %q", smaps, sc.Text())
		}
		if len(fields) < 6 || strings.Join(fields[5:], " ") != path {
			continue
		}
		perms := fields[1]
		if len(perms) < 4 || perms[0] != 'r' || perms[1] != '-' || perms[3] != 'p' {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			return nil, fmt.Errorf("%s: bad range %q", smaps, fields[0])
		}
		cur, want = [2]uintptr{uintptr(start), uintptr(end)}, true
	}
	flush()
	return out, sc.Err()
}

// Idle calls Trim once nothing has called Touch for a while.
type Idle struct {
	quiet time.Duration
	mu    sync.Mutex
	timer *time.Timer
	// trim is Trim, or a stand-in in tests.
	trim func() error
}

// NewIdle trims after quiet without a Touch.
func NewIdle(quiet time.Duration) *Idle { return &Idle{quiet: quiet, trim: Trim} }

// Touch notes activity: the trim waits for quiet after the last one.
func (i *Idle) Touch() {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.timer == nil {
		i.timer = time.AfterFunc(i.quiet, func() {
			if err := i.trim(); err != nil {
				log.L.WithError(err).Warn("give back idle memory")
			}
		})
		return
	}
	i.timer.Reset(i.quiet)
}
