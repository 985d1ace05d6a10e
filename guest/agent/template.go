package agent

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"
	"unsafe"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"

	api "github.com/qemu-shim/qemu-shim/api/agent/v1"
	"github.com/qemu-shim/qemu-shim/guest/codecs"
)

// Bounds of the host's seed for a restored guest.
const (
	minSeedBytes = 32
	maxSeedBytes = 512
)

// The random driver's ioctls (linux/random.h): RNDADDENTROPY adds bytes to
// the input pool and credits them, RNDRESEEDCRNG makes the kernel's
// generator take a new key from that pool at once.
const (
	rndAddEntropy = 0x40085203 // _IOW('R', 0x03, int[2])
	rndReseedCRNG = 0x5207     // _IO('R', 0x07)
)

// Prepare readies the guest to be saved as a template: it waits until the
// modules are loaded and the task service has started, makes the codecs
// of the messages the agent serves (see package codecs), connects to the
// task service ahead of the host (Preconnect), lets go of what no VM
// restored from it needs, and reads WarmFiles into the page cache.
func (s *Service) Prepare(ctx context.Context, _ *api.PrepareRequest) (*emptypb.Empty, error) {
	if err := s.waitModules(ctx); err != nil {
		return nil, err
	}
	if s.TaskdStarted != nil {
		select {
		case <-s.TaskdStarted:
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for the task service: %w", ctx.Err())
		}
	}
	s.waitNamespaces(ctx)
	n := codecs.Protobuf(servedPackages...)
	log.G(ctx).WithField("messages", n).Debug("codecs made")
	if s.Preconnect != nil {
		if err := s.Preconnect(); err != nil {
			log.G(ctx).WithError(err).Warn("connect to the task service ahead of the host")
		}
	}
	unix.Sync()
	// Every byte the guest holds is saved with the template and copied
	// into every VM restored from it, while the pages the host discarded
	// cost nothing. The loaded modules' files and clean caches go, and the
	// memory in use is moved together, so that the free memory is in large
	// blocks, which free page reporting hands to the host (it reports whole
	// 2 MiB blocks only; the host waits for that before saving, see
	// vm.Instance.SaveState). A restored guest that uses and frees them
	// hands them back again. (Zeroing the free memory instead leaves it in
	// small blocks, which are never handed back.)
	if s.ModulesDir != "" {
		if err := os.RemoveAll(s.ModulesDir); err != nil {
			log.G(ctx).WithError(err).Warn("remove the loaded modules' files")
		}
	}
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		log.G(ctx).WithError(err).Warn("drop the page cache")
	}
	if err := os.WriteFile("/proc/sys/vm/compact_memory", []byte("1"), 0); err != nil {
		log.G(ctx).WithError(err).Warn("compact the memory")
	}
	for _, path := range s.WarmFiles {
		if err := readAll(path); err != nil {
			log.G(ctx).WithError(err).WithField("file", path).Warn("warm the page cache")
		}
	}
	log.G(ctx).Info("ready to be saved as a template")
	return &emptypb.Empty{}, nil
}

// servedPackages are the protobuf packages of the messages the agent
// decodes and encodes: its own API's and TTRPC's.
var servedPackages = []string{"qemushim.", "ttrpc.", "google.protobuf."}

// namespaceWait bounds Prepare's wait for Namespaces: one still missing
// then is made by each restored VM when first needed, as in a booted one.
const namespaceWait = 10 * time.Second

// waitNamespaces waits until each of Namespaces is a mounted namespace.
func (s *Service) waitNamespaces(ctx context.Context) {
	if len(s.Namespaces) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, namespaceWait)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for _, path := range s.Namespaces {
		for !isNamespace(path) {
			select {
			case <-ctx.Done():
				log.G(ctx).WithField("path", path).Warn("not saved in the template: the namespace is not there yet")
				return
			case <-tick.C:
			}
		}
	}
}

// isNamespace says whether path is a namespace (nsfs): a process's
// /proc/PID/ns entry, or one mounted elsewhere.
func isNamespace(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

func readAll(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(io.Discard, f)
	return err
}

// Restored makes a guest restored from a template its own: the host's seed
// goes into the random pool and the kernel's generator is reseeded from it
// (clones of one template would otherwise share its state and draw the
// same numbers), and the clock is set to the host's.
func (s *Service) Restored(ctx context.Context, r *api.RestoredRequest) (*emptypb.Empty, error) {
	if n := len(r.Seed); n < minSeedBytes || n > maxSeedBytes {
		return nil, fmt.Errorf("seed of %d bytes: want %d to %d: %w", n, minSeedBytes, maxSeedBytes, errdefs.ErrInvalidArgument)
	}
	if err := reseed(r.Seed); err != nil {
		return nil, err
	}
	if r.UnixTimeNs > 0 {
		tv := unix.NsecToTimeval(r.UnixTimeNs)
		if err := unix.Settimeofday(&tv); err != nil {
			return nil, fmt.Errorf("set the clock: %w", err)
		}
	}
	log.G(ctx).Info("restored from a template: random generator reseeded, clock set")
	if r.WarmUp && s.WarmUp != nil {
		s.WarmUp()
	}
	return &emptypb.Empty{}, nil
}

// reseed credits seed to the kernel's input pool and reseeds its generator.
func reseed(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open the random device: %w", err)
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+len(seed))
	*(*int32)(unsafe.Pointer(&info[0])) = int32(8 * len(seed))
	*(*int32)(unsafe.Pointer(&info[4])) = int32(len(seed))
	copy(info[8:], seed)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndAddEntropy, uintptr(unsafe.Pointer(&info[0]))); errno != 0 {
		return fmt.Errorf("add the host's seed to the random pool: %w", errno)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndReseedCRNG, 0); errno != 0 {
		return fmt.Errorf("reseed the random generator: %w", errno)
	}
	return nil
}
