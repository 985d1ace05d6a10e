package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"

	api "github.com/qemu-shim/qemu-shim/api/agent/v1"
	"github.com/qemu-shim/qemu-shim/guest/blockdev"
	"github.com/qemu-shim/qemu-shim/guest/hotplug"
)

// Version is the agent's version, reported by Info.
var Version = "dev"

const (
	maxReadFile  = 1 << 20
	maxMountWait = 30 * time.Second
)

// fstypes the host may ask to mount.
var mountableFilesystems = map[string]bool{"ext4": true, "erofs": true, "xfs": true, "vfat": true}

var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Service is the Agent TTRPC service.
type Service struct {
	// SysfsRoot is normally /sys; MountRoot is where block devices are mounted.
	SysfsRoot, MountRoot string
	// Transport names the transport the agent serves on.
	Transport string
	// ModulesReady is closed once every kernel module is loaded; requests
	// that need a driver wait for it.
	ModulesReady <-chan struct{}
	// Modules returns the names of the modules loaded so far.
	Modules func() []string
	// PowerOff ends the VM; called after Shutdown has replied.
	PowerOff func()
	// Timeline returns the boot steps so far.
	Timeline func() []*api.BootStep
	// Answered, when set, is closed after the first Info has been
	// answered: the host is then connected and waiting for nothing.
	Answered chan struct{}
	// Step records a boot step.
	Step func(name string)
	// TaskdStarted, when set, is closed once the task service has been
	// started; Prepare waits for it.
	TaskdStarted <-chan struct{}
	// WarmFiles are read by Prepare so that a template's page cache holds
	// them.
	WarmFiles []string
	// Namespaces are the paths of namespaces other processes mount (the
	// task service's containers' network namespace) that Prepare waits
	// for, up to namespaceWait, so that VMs restored from the template do
	// not make them again.
	Namespaces []string
	// ModulesDir holds the kernel modules' files, which Prepare removes
	// once every module is loaded.
	ModulesDir string
	// Preconnect, when set, is called by Prepare once the task service
	// listens: it connects to it ahead of the host (see
	// relay.Relay.Preconnect).
	Preconnect func() error
	// WarmUp, when set, is called by Restored when the host asks for a
	// warm-up (see RestoredRequest.warm_up); it must not block.
	WarmUp func()

	answeredOnce, closeOnce sync.Once

	mu     sync.Mutex
	mounts map[string]string // name → path
}

var _ api.AgentService = (*Service)(nil)

// Info reports the guest's kernel, CPUs, memory, uptime and disks.
func (s *Service) Info(ctx context.Context, _ *api.InfoRequest) (*api.InfoResponse, error) {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return nil, fmt.Errorf("uname: %w", err)
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return nil, fmt.Errorf("read uptime: %w", err)
	}
	memTotal, err := memTotal()
	if err != nil {
		return nil, err
	}
	resp := &api.InfoResponse{
		KernelRelease:    unix.ByteSliceToString(uts.Release[:]),
		CpusOnline:       uint32(onlineCPUs(s.SysfsRoot)),
		MemoryTotalBytes: memTotal,
		UptimeNs:         uint64(ts.Nano()),
		AgentVersion:     Version,
		BlockDevices:     blockDevices(s.SysfsRoot),
		Transport:        s.Transport,
	}
	if s.Modules != nil {
		resp.ModulesLoaded = s.Modules()
	}
	if s.Timeline != nil {
		resp.BootTimeline = s.Timeline()
	}
	resp.Mounts = ownMounts()
	resp.Interfaces = netInterfaces(s.SysfsRoot)
	if s.Answered != nil {
		s.answeredOnce.Do(func() {
			if s.Step != nil {
				s.Step("first-info")
			}
		})
		// Let the reply go out before what waits on it takes the CPU.
		time.AfterFunc(10*time.Millisecond, func() { s.closeOnce.Do(func() { close(s.Answered) }) })
	}
	return resp, nil
}

// netInterfaces lists the network interfaces but loopback.
func netInterfaces(sysfs string) []*api.NetInterface {
	dirs, _ := filepath.Glob(filepath.Join(sysfs, "class", "net", "*"))
	var out []*api.NetInterface
	for _, d := range dirs {
		if filepath.Base(d) == "lo" {
			continue
		}
		out = append(out, &api.NetInterface{Name: filepath.Base(d), Mac: readTrim(filepath.Join(d, "address"))})
	}
	return out
}

// ownMountsPrefix is where everything the agent mounts lives.
const ownMountsPrefix = "/run/qemu-shim/"

// ownMounts lists the agent's mount points, from /proc/self/mountinfo.
func ownMounts() []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], ownMountsPrefix) {
			out = append(out, f[4])
		}
	}
	return out
}

func memTotal() (uint64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("read memory size: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse MemTotal %q: %w", rest, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, errors.New("no MemTotal in /proc/meminfo")
}

func blockDevices(sysfs string) []*api.BlockDevice {
	var out []*api.BlockDevice
	for _, d := range blockdev.List(sysfs) {
		out = append(out, &api.BlockDevice{Name: d.Name, Serial: d.Serial, SizeBytes: d.SizeBytes, ReadOnly: d.ReadOnly})
	}
	return out
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// onlineCPUs counts the CPUs in /sys/devices/system/cpu/online ("0-2,4").
func onlineCPUs(sysfs string) int {
	return CountCPUList(readTrim(filepath.Join(sysfs, "devices/system/cpu/online")))
}

// CountCPUList counts the CPUs in a kernel CPU list such as "0-2,4".
func CountCPUList(list string) int {
	n := 0
	for _, part := range strings.Split(list, ",") {
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			continue
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				continue
			}
		}
		n += b - a + 1
	}
	return n
}

// MountBlock mounts the disk with the given serial below MountRoot.
func (s *Service) MountBlock(ctx context.Context, req *api.MountBlockRequest) (*api.MountBlockResponse, error) {
	if !validName.MatchString(req.Name) {
		return nil, fmt.Errorf("mount name %q: want 1-64 letters, digits, '.', '_' or '-': %w", req.Name, errdefs.ErrInvalidArgument)
	}
	if !mountableFilesystems[req.Fstype] {
		return nil, fmt.Errorf("filesystem type %q cannot be mounted: %w", req.Fstype, errdefs.ErrInvalidArgument)
	}
	wait := time.Duration(req.WaitMs) * time.Millisecond
	if wait > maxMountWait {
		wait = maxMountWait
	}
	if err := s.waitModules(ctx); err != nil {
		return nil, err
	}
	d, err := blockdev.Wait(ctx, s.SysfsRoot, req.Serial, wait)
	if err != nil {
		return nil, err
	}
	dev := d.Path()

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mounts == nil {
		s.mounts = map[string]string{}
	}
	if _, ok := s.mounts[req.Name]; ok {
		return nil, fmt.Errorf("mount %q: %w", req.Name, errdefs.ErrAlreadyExists)
	}
	target := filepath.Join(s.MountRoot, req.Name)
	if err := os.MkdirAll(target, 0o755); err != nil {
		return nil, fmt.Errorf("create mount point: %w", err)
	}
	var flags uintptr = unix.MS_NOSUID | unix.MS_NODEV
	if req.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	for _, o := range req.Options {
		if strings.ContainsAny(o, ",\x00") {
			return nil, fmt.Errorf("mount option %q: %w", o, errdefs.ErrInvalidArgument)
		}
	}
	if err := blockdev.Mount(ctx, dev, target, req.Fstype, flags, strings.Join(req.Options, ","), wait); err != nil {
		os.Remove(target)
		return nil, fmt.Errorf("mount %s (serial %s) as %s on %s: %w", dev, req.Serial, req.Fstype, target, err)
	}
	// A read-only disk mounted read-write silently ends up read-only.
	if !req.ReadOnly && mountIsReadOnly(target) {
		unix.Unmount(target, 0)
		os.Remove(target)
		return nil, fmt.Errorf("disk %s (serial %s) is read-only but was asked for read-write: %w", dev, req.Serial, errdefs.ErrFailedPrecondition)
	}
	s.mounts[req.Name] = target
	log.G(ctx).WithField("device", dev).WithField("target", target).Debug("mounted disk")
	return &api.MountBlockResponse{Path: target, Device: dev}, nil
}

func (s *Service) waitModules(ctx context.Context) error {
	if s.ModulesReady == nil {
		return nil
	}
	select {
	case <-s.ModulesReady:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func mountIsReadOnly(target string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(target, &st); err != nil {
		return false
	}
	return st.Flags&unix.ST_RDONLY != 0
}

// UnmountBlock unmounts a disk mounted by MountBlock.
func (s *Service) UnmountBlock(ctx context.Context, req *api.UnmountBlockRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	target, ok := s.mounts[req.Name]
	if !ok {
		return nil, fmt.Errorf("mount %q: %w", req.Name, errdefs.ErrNotFound)
	}
	if err := unix.Unmount(target, 0); err != nil {
		return nil, fmt.Errorf("unmount %s: %w", target, err)
	}
	os.Remove(target)
	delete(s.mounts, req.Name)
	return &emptypb.Empty{}, nil
}

// ReadFile returns up to max_bytes of a file below a mount. The path cannot
// leave the mount (os.Root refuses .. and symlinks that escape).
func (s *Service) ReadFile(ctx context.Context, req *api.ReadFileRequest) (*api.ReadFileResponse, error) {
	s.mu.Lock()
	target, ok := s.mounts[req.Mount]
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("mount %q: %w", req.Mount, errdefs.ErrNotFound)
	}
	max := int64(req.MaxBytes)
	if max <= 0 || max > maxReadFile {
		max = maxReadFile
	}
	root, err := os.OpenRoot(target)
	if err != nil {
		return nil, fmt.Errorf("open mount %q: %w", req.Mount, err)
	}
	defer root.Close()
	f, err := root.Open(req.Path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("read %q in mount %q: %w", req.Path, req.Mount, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("read %q in mount %q: %w: %w", req.Path, req.Mount, err, errdefs.ErrInvalidArgument)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %q: %w", req.Path, err)
	}
	resp := &api.ReadFileResponse{Data: data}
	if int64(len(data)) > max {
		resp.Data, resp.Truncated = data[:max], true
	}
	return resp, nil
}

// MountTools mounts the tools disk read-only at api.ToolsMountPoint, waiting
// up to wait for it to appear.
func (s *Service) MountTools(ctx context.Context, wait time.Duration) error {
	d, err := blockdev.Wait(ctx, s.SysfsRoot, api.ToolsDiskSerial, wait)
	if err != nil {
		return fmt.Errorf("tools disk: %w", err)
	}
	dev := d.Path()
	if err := os.MkdirAll(api.ToolsMountPoint, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(dev, api.ToolsMountPoint, "erofs", unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
		return fmt.Errorf("mount tools disk %s: %w", dev, err)
	}
	return nil
}

// Shutdown unmounts what it mounted, syncs, and powers off once the reply
// had time to leave.
func (s *Service) Shutdown(ctx context.Context, _ *api.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	for name, target := range s.mounts {
		if err := unix.Unmount(target, 0); err != nil {
			log.G(ctx).WithError(err).WithField("mount", name).Warn("unmount at shutdown")
		}
	}
	s.mu.Unlock()
	unix.Sync()
	if s.PowerOff != nil {
		// The host does not wait for this reply (it waits for QEMU to exit),
		// but give it a moment to leave so the host sees a clean answer.
		time.AfterFunc(20*time.Millisecond, s.PowerOff)
	}
	return &emptypb.Empty{}, nil
}

// SetCPUsOnline onlines or offlines CPUs until the count asked are online.
func (s *Service) SetCPUsOnline(ctx context.Context, r *api.SetCPUsOnlineRequest) (*api.SetCPUsOnlineResponse, error) {
	if r.Count < 1 {
		return nil, fmt.Errorf("%d CPUs online: want at least 1: %w", r.Count, errdefs.ErrInvalidArgument)
	}
	online, present, err := (&hotplug.Onliner{SysfsRoot: s.SysfsRoot}).SetCPUsOnline(int(r.Count))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
	}
	log.G(ctx).WithField("online", online).WithField("present", present).Info("CPUs online set")
	return &api.SetCPUsOnlineResponse{Online: uint32(online), Present: uint32(present)}, nil
}
