package boot

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Reroot turns the initramfs root into a bind mount of itself. pivot_root
// refuses to move away from the initial rootfs, and runc needs pivot_root;
// binding / onto a directory, moving that over / and chrooting into it
// fixes that without copying anything. It must run before anything else is
// mounted (the bind is not recursive). Threads share the process's root, so
// no re-exec is needed.
func Reroot(scratch string) error {
	if err := os.MkdirAll(scratch, 0o700); err != nil {
		return fmt.Errorf("reroot: %w", err)
	}
	if err := unix.Mount("/", scratch, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("reroot: bind / on %s: %w", scratch, err)
	}
	if err := unix.Chdir(scratch); err != nil {
		return fmt.Errorf("reroot: %w", err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("reroot: move %s to /: %w", scratch, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("reroot: chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("reroot: %w", err)
	}
	return nil
}

type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// pseudoFilesystems are mounted in this order.
var pseudoFilesystems = []mount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
	{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "nsdelegate"},
}

// MountPseudoFilesystems mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run,
// /tmp and cgroup v2 on /sys/fs/cgroup.
func MountPseudoFilesystems() error {
	for _, m := range pseudoFilesystems {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", m.target, err)
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil && err != unix.EBUSY {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	// runc expects /dev/ptmx to be the devpts instance's.
	os.Remove("/dev/ptmx")
	if err := os.Symlink("pts/ptmx", "/dev/ptmx"); err != nil {
		return fmt.Errorf("link /dev/ptmx: %w", err)
	}
	for _, l := range [][2]string{{"/proc/self/fd", "/dev/fd"}, {"/proc/self/fd/0", "/dev/stdin"}, {"/proc/self/fd/1", "/dev/stdout"}, {"/proc/self/fd/2", "/dev/stderr"}} {
		os.Symlink(l[0], l[1])
	}
	return nil
}

// KernelParams reads the key=value words of /proc/cmdline that start with
// prefix, with the prefix removed.
func KernelParams(cmdline, prefix string) map[string]string {
	out := map[string]string{}
	for _, w := range strings.Fields(cmdline) {
		if rest, ok := strings.CutPrefix(w, prefix); ok {
			k, v, _ := strings.Cut(rest, "=")
			out[k] = v
		}
	}
	return out
}
