// Package share stages a container's bind mounts for the guest: each bind
// mount's source (a directory or a single file) is bind-mounted into the
// VM's staging directory, which virtiofsd exports, read-only there when
// the mount asks for it, so a guest can reach exactly those sources and
// can write through none of the read-only ones whatever it sends to
// virtiofsd. The spec the guest gets names each mount's staged entry
// instead of the host path; the guest bind-mounts it from the share.
package share

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/qemu-shim/qemu-shim/internal/mountutil"
	agentapi "github.com/qemu-shim/qemu-shim/task/agent/v1"
)

// SourcePrefix starts the source of a mount staged in the share, in the
// spec the guest gets: the rest is the entry's path in the share.
const SourcePrefix = agentapi.ShareSourcePrefix

// maxMounts bounds the bind mounts of one container.
const maxMounts = 256

// ValidEntry says whether rel names a staged entry (the guest's check).
func ValidEntry(rel string) bool { return agentapi.ValidShareEntry(rel) }

// Staging is the VM's staging directory.
type Staging struct {
	// Dir is the exported directory (vm.Instance.ShareDir).
	Dir string
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

// Add stages the bind mounts of a container and returns the mounts with
// their sources pointing into the share, and the entry's directory (for
// Remove). A source that does not exist is refused, naming the mount. On
// error nothing is left staged.
func (s *Staging) Add(mounts []specs.Mount) (_ []specs.Mount, dir string, retErr error) {
	if Binds(mounts) == 0 {
		return mounts, "", nil
	}
	if Binds(mounts) > maxMounts {
		return nil, "", fmt.Errorf("%d bind mounts: at most %d: %w", Binds(mounts), maxMounts, errdefs.ErrInvalidArgument)
	}
	s.seq++
	name := "c" + strconv.Itoa(s.seq)
	entryDir := filepath.Join(s.Dir, name)
	if err := os.Mkdir(entryDir, 0o700); err != nil {
		return nil, "", fmt.Errorf("staging directory: %w", err)
	}
	defer func() {
		if retErr != nil {
			Remove(entryDir)
		}
	}()
	out := make([]specs.Mount, 0, len(mounts))
	for i, m := range mounts {
		if !IsBind(m) {
			out = append(out, m)
			continue
		}
		entry := "m" + strconv.Itoa(i)
		if err := stage(m, filepath.Join(entryDir, entry)); err != nil {
			return nil, "", fmt.Errorf("bind mount %d (%s on %s): %w", i, m.Source, m.Destination, err)
		}
		m.Source = SourcePrefix + name + "/" + entry
		out = append(out, m)
	}
	return out, entryDir, nil
}

// stage bind-mounts the source onto target. The source is opened first
// and mounted through its descriptor, so what was checked is what is
// mounted: a symlink swapped in between changes nothing.
func stage(m specs.Mount, target string) error {
	if !filepath.IsAbs(m.Source) {
		return fmt.Errorf("source is not an absolute path: %w", errdefs.ErrInvalidArgument)
	}
	fd, err := unix.Open(m.Source, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("source does not exist: %w", errdefs.ErrNotFound)
		}
		return fmt.Errorf("open source: %w", err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		err = os.Mkdir(target, 0o700)
	default:
		// A single file (or device, socket…): bound on an empty file.
		var f *os.File
		if f, err = os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o600); err == nil {
			f.Close()
		}
	}
	if err != nil {
		return err
	}
	// The mount is made detached, given its attributes there, and only then
	// moved into the share: the copy that propagates into virtiofsd's
	// mount namespace is made at the move, read-only already.
	clone := uint(unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC | unix.AT_EMPTY_PATH)
	if slices.Contains(m.Options, "rbind") {
		clone |= unix.AT_RECURSIVE
	}
	tree, err := unix.OpenTree(fd, "", clone)
	if err != nil {
		return fmt.Errorf("clone the source's mount: %w", err)
	}
	defer unix.Close(tree)
	// Private: the staged copy never propagates back to the host's source.
	attr := &unix.MountAttr{Propagation: unix.MS_PRIVATE}
	if slices.Contains(m.Options, "ro") {
		// Read-only below any submount too: virtiofsd cannot write
		// through it whatever the guest asks.
		attr.Attr_set = unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, attr); err != nil {
		return fmt.Errorf("set the staged mount's attributes: %w", err)
	}
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("bind into the share: %w", err)
	}
	return nil
}

// Remove unstages a container's entries (its dir from Add).
func Remove(dir string) error {
	if dir == "" {
		return nil
	}
	return mountutil.RemoveAll(dir)
}
