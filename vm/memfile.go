package vm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/qemu-shim/qemu-shim/internal/sparse"
	"github.com/qemu-shim/qemu-shim/vm/cmdline"
)

// A saved VM is a directory of two files: QEMU's migration stream without
// the guest's RAM (SavedStateName), and the RAM itself (SavedMemoryName), a
// sparse file holding only the pages that are not zero. A VM saved or
// restored so has its RAM in a memory file of its own (memfd, shared with
// QEMU): restoring copies the saved pages into it and nothing else, so a
// restored VM's host memory is what its template's guest had written, not
// the whole of its RAM (QEMU's loading of a stream touches every page).
const (
	SavedStateName  = "state"
	SavedMemoryName = "memory"
)

// hasMemoryFile says whether the guest's RAM lives in a memory file of the
// shim's: a VM booted to be saved or one restored.
func (c Config) hasMemoryFile() bool { return c.ForTemplate || c.Restore != "" }

// openMemory creates the guest's memory file. For a VM restored, a copy of
// its descriptor is filled with the saved pages meanwhile (QEMU writes no
// RAM of a VM waiting for its incoming state), and i.memoryLoaded says when
// that has ended.
func (i *Instance) openMemory(ctx context.Context) (*os.File, error) {
	fd, err := unix.MemfdCreate("qemu-shim-ram-"+i.cfg.ID, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("create the guest's memory file: %w", err)
	}
	f := os.NewFile(uintptr(fd), "guest memory of "+i.cfg.ID)
	size := int64(i.cfg.MemoryMiB) << 20
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("size the guest's memory file: %w", err)
	}
	if i.cfg.Restore == "" {
		return f, nil
	}
	saved, err := os.Open(filepath.Join(i.cfg.Restore, SavedMemoryName))
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: %w", ErrRestore, err)
	}
	if st, err := saved.Stat(); err != nil || st.Size() != size {
		f.Close()
		saved.Close()
		if err == nil {
			err = fmt.Errorf("%s holds %d bytes of guest memory, the VM has %d", saved.Name(), st.Size(), size)
		}
		return nil, fmt.Errorf("%w: %w", ErrRestore, err)
	}
	dst, err := dupFile(f)
	if err != nil {
		f.Close()
		saved.Close()
		return nil, err
	}
	i.memoryLoaded = make(chan error, 1)
	go func() {
		defer saved.Close()
		defer dst.Close()
		begin := time.Now()
		n, err := sparse.CopyData(dst, saved)
		if err != nil {
			i.memoryLoaded <- fmt.Errorf("%w: load the guest's memory: %w", ErrRestore, err)
			return
		}
		log.G(ctx).WithField("vm", i.cfg.ID).WithField("bytes", n).WithField("took", time.Since(begin)).Debug("guest memory loaded")
		i.memoryLoaded <- nil
	}()
	return f, nil
}

// saveMemory writes the guest's RAM, paused, into dir.
func (i *Instance) saveMemory(dir string) (int64, error) {
	if i.memory == nil {
		return 0, fmt.Errorf("vm %s: its memory is not in a file of its own: start it ForTemplate to save it", i.cfg.ID)
	}
	out, err := os.OpenFile(filepath.Join(dir, SavedMemoryName), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	n, err := sparse.CopyNonZero(out, i.memory, int64(i.cfg.MemoryMiB)<<20)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("vm %s: save the guest's memory: %w", i.cfg.ID, err)
	}
	return n, nil
}

// ignoreShared has QEMU leave the guest's memory (all of it shared, see
// cmdline.Machine.MemoryFD) out of the migration stream it writes or reads.
func (i *Instance) ignoreShared(ctx context.Context) error {
	caps := migrateSetCapabilities{Capabilities: []migrationCapability{{Capability: cmdline.IgnoreShared, State: true}}}
	return i.qmp.Run(ctx, "migrate-set-capabilities", caps, nil)
}

// dupFile returns a second descriptor of f, closed on exec.
func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate %s: %w", f.Name(), err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// How SaveState waits for the guest to hand back its free memory: free
// page reporting runs reportingQuiet after the guest last freed a large
// block, and QEMU discards what it reports from the memory file.
var (
	reportingQuiet    = 2500 * time.Millisecond
	reportingDeadline = 15 * time.Second
	reportingPoll     = 100 * time.Millisecond
)

// waitReported waits until the memory file has not shrunk for
// reportingQuiet (or reportingDeadline has passed): what the guest's free
// page reporting discards from it is then not saved.
func (i *Instance) waitReported(ctx context.Context) error {
	allocated := func() (int64, error) {
		var st unix.Stat_t
		if err := unix.Fstat(int(i.memory.Fd()), &st); err != nil {
			return 0, err
		}
		return st.Blocks * 512, nil
	}
	begin := time.Now()
	first, err := allocated()
	if err != nil {
		return err
	}
	last, since := first, time.Now()
	for time.Since(since) < reportingQuiet && time.Since(begin) < reportingDeadline {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(reportingPoll):
		}
		n, err := allocated()
		if err != nil {
			return err
		}
		if n < last {
			last, since = n, time.Now()
		}
	}
	log.G(ctx).WithField("vm", i.cfg.ID).WithField("before_mib", first>>20).WithField("after_mib", last>>20).
		WithField("took", time.Since(begin)).Debug("free memory handed back before saving")
	return nil
}
