package vm

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/qemu-shim/qemu-shim/internal/transport"
)

// DefaultStateRoot holds one directory per running VM.
const DefaultStateRoot = "/run/qemu-shim"

// CIDLeaseDirName is the directory under the state root where vsock CIDs
// are leased; no VM may have it as its ID.
const CIDLeaseDirName = "vsock-cids"

// UIDLeaseDirName is the directory under the state root where the user IDs
// QEMU runs as are leased, and ChrootDirName the empty directory QEMU is
// held in; a VM ID cannot start with '.'.
const (
	UIDLeaseDirName = ".qemu-uids"
	ChrootDirName   = ".qemu-root"
)

// StateRootEntry says whether name is one of the state root's own entries
// rather than a VM's state directory.
func StateRootEntry(name string) bool {
	return name == CIDLeaseDirName || name == UIDLeaseDirName || name == ChrootDirName || name == QEMUFeaturesName ||
		strings.HasPrefix(name, QEMUFeaturesName+".") // one being written
}

// The user and group IDs QEMU runs as by default: one per VM, from a range
// far above what hosts give people, services and the usual subordinate ID
// ranges of user namespaces (from 100000, in blocks of 65536).
const (
	DefaultQEMUUIDFirst = 1_500_000_000
	DefaultQEMUUIDCount = 65536
)

// DefaultTCGCacheMiB bounds TCG's translation cache, which stays resident
// once filled. QEMU's own default (1 GiB) lets each VM's grow to that; a
// guest that has booted and started a container holds about 98 MiB of
// translated code, and a smaller cache makes every runc start translate
// again (exec of `true` 1.5 s at 64 MiB, 3 s at 32 MiB, against 0.77 s
// with QEMU's default and 0.75 s at 128 MiB, measured in one run).
const DefaultTCGCacheMiB = 128

// DefaultFirmware is the small qboot firmware Debian's qemu-system-data ships.
const DefaultFirmware = "/usr/share/qemu/qboot.rom"

// Config describes a VM before it starts.
type Config struct {
	// ID names the VM and its state directory.
	ID string
	// StateRoot is where the state directory goes (DefaultStateRoot).
	StateRoot string
	// QEMU is the emulator binary (qemu-system-x86_64 from PATH).
	QEMU string
	// Kernel (an uncompressed PVH vmlinux or a bzImage) and Initrd.
	Kernel, Initrd string
	// Tools is the guest tools disk image (the agent and runc).
	Tools string
	// Firmware is passed as -bios; DefaultFirmware when it exists, else
	// QEMU's own.
	Firmware string
	// Accel is "auto" (KVM when usable, else TCG), "kvm" or "tcg".
	Accel string
	// Transport to the agent; Auto picks vsock where the host has it.
	Transport transport.Kind

	CPUs, MaxCPUs int
	// MemoryMiB at boot; MaxMemoryMiB is the hot-plug ceiling;
	// MemorySlots the number of DIMMs that may be added.
	MemoryMiB, MaxMemoryMiB, MemorySlots int
	// VirtioMemMiB, when set, adds a virtio-mem device that can give the
	// guest up to that much more memory in 2 MiB steps, and take it back;
	// SetMemory then uses it instead of DIMMs.
	VirtioMemMiB int
	// TCGCacheMiB bounds TCG's translation cache (DefaultTCGCacheMiB when
	// 0); it does nothing under KVM.
	TCGCacheMiB int

	// KernelParams are added to the default kernel command line.
	KernelParams []string
	// Disks present at boot.
	Disks []Disk
	// NICs present at boot, on existing tap devices.
	NICs []NIC
	// AllowedDiskRoots bounds where disk images may come from; empty
	// allows any existing path.
	AllowedDiskRoots []string
	// HotplugPorts is how many PCIe slots are kept for hot-plugged network
	// cards. Hot-plugged disks go on a virtio-scsi controller instead.
	HotplugPorts int
	// Share, when set, exports the VM's staging directory (ShareDir) to the
	// guest over virtio-fs, and puts the guest's RAM in shared memory.
	Share *Share
	// BootTimeout bounds Start (until the agent answers).
	BootTimeout time.Duration
	// Debug makes the agent log verbosely to the console log.
	Debug bool
	// AllowUnconfined lets QEMU start without its seccomp filter or with
	// its capabilities, where this host cannot confine it (see confine).
	AllowUnconfined bool
	// ConsoleLogMaxBytes bounds each of console.log and its rotated copy
	// (ConsoleLogMaxBytes when 0).
	ConsoleLogMaxBytes int64
	// QEMUUIDFirst and QEMUUIDCount are the IDs QEMU runs as (user and
	// group alike, one per running VM; DefaultQEMUUIDFirst and
	// DefaultQEMUUIDCount when the count is 0). No host user needs them.
	QEMUUIDFirst, QEMUUIDCount uint32
	// SharedMemory puts the guest's RAM in shared memory even without a
	// Share; a Share implies it.
	SharedMemory bool
	// Restore, when set, is a directory SaveState wrote for a VM of the
	// same ShapeKey: Start restores it instead of booting the kernel, then
	// reseeds the guest and plugs in the share, if any.
	Restore string
	// ForTemplate boots the VM to be saved (SaveState): its RAM lives in a
	// memory file of the shim's, which SaveState writes out.
	ForTemplate bool
	// WarmUp asks a guest restored under TCG to run a throwaway
	// container's create at once, on its idle vCPU (see agent
	// RestoredRequest.warm_up): the first container then finds the
	// emulator's code translated. It costs the VM's emulator the code it
	// translates for it.
	WarmUp bool
}

// Disk is a disk image handed to the guest. The guest finds it by ID, which
// becomes the device's serial.
type Disk struct {
	ID       string
	Path     string
	ReadOnly bool
	// Format is raw (default) or qcow2.
	Format string
}

var (
	validVMID   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
	validDiskID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,19}$`)
)

// CheckID says whether id may name a VM: it names the VM's state directory
// under the state root too.
func CheckID(id string) error {
	if !validVMID.MatchString(id) {
		return fmt.Errorf("id %q: want 1-64 letters, digits, '_', '.' or '-': %w", id, errdefs.ErrInvalidArgument)
	}
	if StateRootEntry(id) {
		return fmt.Errorf("id %q: one of the state root's own directories has that name: %w", id, errdefs.ErrInvalidArgument)
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.StateRoot == "" {
		c.StateRoot = DefaultStateRoot
	}
	if c.QEMU == "" {
		c.QEMU = "qemu-system-x86_64"
	}
	if c.Firmware == "" {
		if _, err := os.Stat(DefaultFirmware); err == nil {
			c.Firmware = DefaultFirmware
		}
	}
	if c.Accel == "" {
		c.Accel = "auto"
	}
	if c.Transport == "" {
		c.Transport = transport.Auto
	}
	if c.CPUs == 0 {
		c.CPUs = 1
	}
	if c.MaxCPUs == 0 {
		c.MaxCPUs = max(c.CPUs, 4)
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = 256
	}
	if c.MaxMemoryMiB == 0 {
		c.MaxMemoryMiB = c.MemoryMiB + 2048
	}
	if c.MemorySlots == 0 && c.MaxMemoryMiB > c.MemoryMiB {
		c.MemorySlots = 8
	}
	if c.TCGCacheMiB == 0 {
		c.TCGCacheMiB = DefaultTCGCacheMiB
	}
	if c.HotplugPorts == 0 {
		c.HotplugPorts = 4
	}
	if c.BootTimeout == 0 {
		c.BootTimeout = 60 * time.Second
	}
	if c.ConsoleLogMaxBytes == 0 {
		c.ConsoleLogMaxBytes = ConsoleLogMaxBytes
	}
	if c.QEMUUIDCount == 0 {
		c.QEMUUIDFirst, c.QEMUUIDCount = DefaultQEMUUIDFirst, DefaultQEMUUIDCount
	}
}

func (c *Config) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("vm config: "+format+": %w", append(args, errdefs.ErrInvalidArgument)...)
	}
	if err := CheckID(c.ID); err != nil {
		return fmt.Errorf("vm config: %w", err)
	}
	if c.Accel != "auto" && c.Accel != "kvm" && c.Accel != "tcg" {
		return bad("accel %q: want auto, kvm or tcg", c.Accel)
	}
	if _, err := transport.ParseKind(string(c.Transport)); err != nil {
		return bad("%v", err)
	}
	for _, f := range []struct{ what, path string }{{"kernel", c.Kernel}, {"initrd", c.Initrd}, {"tools disk", c.Tools}} {
		if f.path == "" {
			return bad("no %s", f.what)
		}
		if _, err := os.Stat(f.path); err != nil {
			return bad("%s %s: %v (build it with 'make guest'; 'make install' puts it in /usr/local/share/qemu-shim)", f.what, f.path, err)
		}
	}
	if c.CPUs < 1 || c.MaxCPUs < c.CPUs {
		return bad("vCPUs %d (max %d)", c.CPUs, c.MaxCPUs)
	}
	if c.MemoryMiB < 64 || c.MaxMemoryMiB < c.MemoryMiB {
		return bad("memory %d MiB (max %d MiB)", c.MemoryMiB, c.MaxMemoryMiB)
	}
	if c.VirtioMemMiB < 0 || c.VirtioMemMiB%2 != 0 || c.MemoryMiB+c.VirtioMemMiB > c.MaxMemoryMiB {
		return bad("virtio-mem %d MiB: want an even number that fits below the %d MiB maximum with the %d MiB at boot", c.VirtioMemMiB, c.MaxMemoryMiB, c.MemoryMiB)
	}
	if c.TCGCacheMiB < 1 {
		return bad("TCG translation cache %d MiB: want at least 1", c.TCGCacheMiB)
	}
	if c.ConsoleLogMaxBytes < 1024 {
		return bad("console log bound %d bytes: want at least 1 KiB", c.ConsoleLogMaxBytes)
	}
	if last := uint64(c.QEMUUIDFirst) + uint64(c.QEMUUIDCount) - 1; c.QEMUUIDFirst == 0 || last >= 1<<32-1 {
		return bad("QEMU's user IDs %d-%d: want a range above 0 and below 4294967295", c.QEMUUIDFirst, last)
	}
	seen := map[string]bool{}
	for _, n := range c.NICs {
		if err := n.check(); err != nil {
			return err
		}
		if seen[n.ID] {
			return bad("device id %q used twice", n.ID)
		}
		seen[n.ID] = true
	}
	for i := range c.Disks {
		if err := c.checkDisk(&c.Disks[i]); err != nil {
			return err
		}
		if seen[c.Disks[i].ID] {
			return bad("disk id %q used twice", c.Disks[i].ID)
		}
		seen[c.Disks[i].ID] = true
	}
	return nil
}

// checkDisk validates a disk and resolves its path. A disk path is never
// handed to QEMU unchecked: it must exist, be a file or block device, and
// lie inside an allowed root.
func (c *Config) checkDisk(d *Disk) error {
	if !validDiskID.MatchString(d.ID) {
		return fmt.Errorf("disk id %q: want 1-20 letters, digits, '_' or '-' (it becomes the serial, of which QEMU keeps 20 characters): %w", d.ID, errdefs.ErrInvalidArgument)
	}
	if d.Format != "" && d.Format != "raw" && d.Format != "qcow2" {
		return fmt.Errorf("disk %s: format %q: want raw or qcow2: %w", d.ID, d.Format, errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(d.Path) {
		return fmt.Errorf("disk %s: path %q is not absolute: %w", d.ID, d.Path, errdefs.ErrInvalidArgument)
	}
	resolved, err := filepath.EvalSymlinks(d.Path)
	if err != nil {
		return fmt.Errorf("disk %s: image %s does not exist: %w", d.ID, d.Path, errdefs.ErrNotFound)
	}
	st, err := os.Stat(resolved)
	if err != nil {
		return fmt.Errorf("disk %s: image %s: %v: %w", d.ID, d.Path, err, errdefs.ErrNotFound)
	}
	if !st.Mode().IsRegular() && st.Mode()&os.ModeDevice == 0 {
		return fmt.Errorf("disk %s: %s is neither a file nor a block device: %w", d.ID, d.Path, errdefs.ErrInvalidArgument)
	}
	if len(c.AllowedDiskRoots) > 0 {
		ok := false
		for _, root := range c.AllowedDiskRoots {
			r, err := filepath.EvalSymlinks(root)
			if err != nil {
				continue
			}
			if rel, err := filepath.Rel(r, resolved); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
				ok = true
				break
			}
		}
		if !ok {
			return fmt.Errorf("disk %s: %s is outside the allowed roots %v: %w", d.ID, d.Path, c.AllowedDiskRoots, errdefs.ErrPermissionDenied)
		}
	}
	d.Path = resolved
	return nil
}
