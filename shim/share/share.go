// Package share stages a container's bind mounts for the guest: each bind
// mount's source (a directory or a single file) is mounted into the VM's
// staging directory inside virtiofsd's own mount namespace, which
// virtiofsd exports, read-only there when the mount asks for it, so a
// guest can reach exactly those sources and can write through none of the
// read-only ones whatever it sends to virtiofsd. The staged mounts are
// never in the host's mount namespace, where they would keep the host's
// directories busy (a volume removed while the pod runs). The spec the
// guest gets names each mount's staged entry instead of the host path;
// the guest bind-mounts it from the share.
package share

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	agentapi "github.com/qemu-shim/qemu-shim/api/agent/v1"
	"github.com/qemu-shim/qemu-shim/internal/mountutil"
	"github.com/qemu-shim/qemu-shim/internal/nsthread"
)

// SourcePrefix starts the source of a mount staged in the share, in the
// spec the guest gets: the rest is the entry's path in the share.
const SourcePrefix = agentapi.ShareSourcePrefix

// Marker is the file at the top of the staging directory (vm.ShareMarker).
const Marker = ".qemu-shim-share"

// maxMounts bounds the bind mounts of one container.
const maxMounts = 256

// ValidEntry says whether rel names a staged entry (the guest's check).
func ValidEntry(rel string) bool { return agentapi.ValidShareEntry(rel) }

// Staging is the VM's staging directory.
type Staging struct {
	// Dir is the exported directory (vm.Instance.ShareDir), as the host
	// sees it.
	Dir string
	// Pid is a process in the mount namespace where the staged mounts are
	// made, whose root there is Dir (virtiofsd's).
	Pid int
	seq int
}

// IsBind says whether a spec mount is a bind mount of a host path.
func IsBind(m specs.Mount) bool {
	return m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
}

// Binds counts a spec's bind mounts.
func Binds(mounts []specs.Mount) int {
	n := 0
	for _, m := range mounts {
		if IsBind(m) {
			n++
		}
	}
	return n
}

// staged is a source ready to be attached: its mount, cloned detached.
type staged struct {
	tree  int
	entry string // "cN/mK"
}

// Add stages the bind mounts of a container and returns the mounts with
// their sources pointing into the share, and the container's entry (for
// Remove). A source that does not exist is refused, naming the mount. On
// error nothing is left staged.
func (s *Staging) Add(mounts []specs.Mount) (_ []specs.Mount, entry string, retErr error) {
	if Binds(mounts) == 0 {
		return mounts, "", nil
	}
	if Binds(mounts) > maxMounts {
		return nil, "", fmt.Errorf("%d bind mounts: at most %d: %w", Binds(mounts), maxMounts, errdefs.ErrInvalidArgument)
	}
	s.seq++
	name := "c" + strconv.Itoa(s.seq)
	if err := os.Mkdir(filepath.Join(s.Dir, name), 0o700); err != nil {
		return nil, "", fmt.Errorf("staging directory: %w", err)
	}
	var trees []staged
	defer func() {
		for _, t := range trees {
			unix.Close(t.tree)
		}
		if retErr != nil {
			s.Remove(name)
		}
	}()
	out := make([]specs.Mount, 0, len(mounts))
	for i, m := range mounts {
		if !IsBind(m) {
			out = append(out, m)
			continue
		}
		e := name + "/m" + strconv.Itoa(i)
		tree, isDir, resolved, err := clone(m)
		if err != nil {
			return nil, "", fmt.Errorf("bind mount %d (%s on %s): %w", i, m.Source, m.Destination, err)
		}
		trees = append(trees, staged{tree: tree, entry: e})
		if err := placeholder(filepath.Join(s.Dir, e), isDir); err != nil {
			return nil, "", err
		}
		subs, err := submounts(m, resolved, SourcePrefix+e)
		if err != nil {
			return nil, "", fmt.Errorf("bind mount %d (%s on %s): %w", i, m.Source, m.Destination, err)
		}
		m.Source = SourcePrefix + e
		out = append(out, m)
		out = append(out, subs...)
	}
	if err := s.inNamespace(func() error {
		for _, t := range trees {
			if err := unix.MoveMount(t.tree, "", unix.AT_FDCWD, "/"+t.entry, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
				return fmt.Errorf("mount %s into the share: %w", t.entry, err)
			}
		}
		return nil
	}); err != nil {
		return nil, "", err
	}
	return out, name, nil
}

// placeholder makes what a staged mount goes on: a directory, or an empty
// file for a single file (or device, socket…).
func placeholder(p string, dir bool) error {
	if dir {
		return os.Mkdir(p, 0o700)
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}

// clone opens the source and clones its mount detached, with the mount's
// attributes. The source is opened first and cloned through its
// descriptor, so what was checked is what is mounted: a symlink swapped
// in between changes nothing.
func clone(m specs.Mount) (tree int, isDir bool, resolved string, retErr error) {
	if !filepath.IsAbs(m.Source) {
		return -1, false, "", fmt.Errorf("source is not an absolute path: %w", errdefs.ErrInvalidArgument)
	}
	fd, err := unix.Open(m.Source, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return -1, false, "", fmt.Errorf("source does not exist: %w", errdefs.ErrNotFound)
		}
		return -1, false, "", fmt.Errorf("open source: %w", err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return -1, false, "", err
	}
	resolved, err = os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return -1, false, "", err
	}
	flags := uint(unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC | unix.AT_EMPTY_PATH)
	if slices.Contains(m.Options, "rbind") {
		flags |= unix.AT_RECURSIVE
	}
	tree, err = unix.OpenTree(fd, "", flags)
	if err != nil {
		return -1, false, "", fmt.Errorf("clone the source's mount: %w", err)
	}
	defer func() {
		if retErr != nil {
			unix.Close(tree)
		}
	}()
	// The staged copy never propagates back to the host's source. It is a
	// slave of the source when the mount asks for propagation from the
	// host (rslave, or rshared, whose other direction a VM cannot give):
	// mounts the host makes below the source then reach the guest.
	propagation := uint64(unix.MS_PRIVATE)
	for _, o := range m.Options {
		if o == "rslave" || o == "slave" || o == "rshared" || o == "shared" {
			propagation = unix.MS_SLAVE
		}
	}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &unix.MountAttr{Propagation: propagation}); err != nil {
		return -1, false, "", fmt.Errorf("set the staged mount's propagation: %w", err)
	}
	// Read-only as runc makes it: the top mount for ro, every submount too
	// for rro.
	if rro := slices.Contains(m.Options, "rro"); rro || slices.Contains(m.Options, "ro") {
		f := uint(unix.AT_EMPTY_PATH)
		if rro {
			f |= unix.AT_RECURSIVE
		}
		if err := unix.MountSetattr(tree, "", f, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
			return -1, false, "", fmt.Errorf("make the staged mount read-only: %w", err)
		}
	}
	return tree, st.Mode&unix.S_IFMT == unix.S_IFDIR, resolved, nil
}

// submounts returns, for a non-recursive read-only rbind, a mount of each
// submount of the source below the first, with its own writability: the
// guest mounts the share as one filesystem, and its read-only bind would
// otherwise cover what runc leaves writable.
func submounts(m specs.Mount, resolved, source string) ([]specs.Mount, error) {
	if !slices.Contains(m.Options, "rbind") || !slices.Contains(m.Options, "ro") || slices.Contains(m.Options, "rro") {
		return nil, nil
	}
	below, err := mountutil.MountInfoUnder(resolved)
	if err != nil {
		return nil, err
	}
	var out []specs.Mount
	// Shallowest first: the guest mounts them in order.
	for i := len(below) - 1; i >= 0; i-- {
		sub := below[i]
		rel := strings.TrimPrefix(sub.Path, resolved+"/")
		if sub.Path == resolved || rel == sub.Path {
			continue
		}
		opts := []string{"rbind", "rw"}
		if sub.ReadOnly {
			opts[1] = "ro"
		}
		out = append(out, specs.Mount{Destination: path.Join(m.Destination, rel), Type: "bind", Source: source + "/" + rel, Options: opts})
		if len(out) > maxMounts {
			return nil, fmt.Errorf("more than %d submounts: %w", maxMounts, errdefs.ErrInvalidArgument)
		}
	}
	return out, nil
}

// inNamespace runs fn on a thread that has entered the staging mount
// namespace, whose root is the staging directory.
func (s *Staging) inNamespace(fn func() error) error {
	return nsthread.Do(func() error {
		ns, err := unix.Open(fmt.Sprintf("/proc/%d/ns/mnt", s.Pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("virtiofsd's mount namespace: %w", err)
		}
		defer unix.Close(ns)
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			return fmt.Errorf("unshare the filesystem attributes: %w", err)
		}
		if err := unix.Setns(ns, unix.CLONE_NEWNS); err != nil {
			return fmt.Errorf("enter virtiofsd's mount namespace: %w", err)
		}
		if _, err := os.Stat("/" + Marker); err != nil {
			return fmt.Errorf("virtiofsd's mount namespace has no share at its root (%v): %w", err, errdefs.ErrFailedPrecondition)
		}
		return fn()
	})
}

// Remove unstages a container's entry (its name from Add): its mounts in
// the staging namespace, then its directory.
func (s *Staging) Remove(entry string) error {
	if entry == "" {
		return nil
	}
	if !ValidEntry(entry+"/m0") || s.Pid == 0 {
		return fmt.Errorf("staged entry %q: %w", entry, errdefs.ErrInvalidArgument)
	}
	err := s.inNamespace(func() error {
		entries, err := os.ReadDir("/" + entry)
		if err != nil {
			return err
		}
		var errs []error
		for _, e := range entries {
			if err := unix.Unmount("/"+entry+"/"+e.Name(), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("unmount %s/%s: %w", entry, e.Name(), err))
			}
		}
		return errors.Join(errs...)
	})
	if err != nil {
		return err
	}
	return mountutil.RemoveAll(filepath.Join(s.Dir, entry))
}
