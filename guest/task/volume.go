package task

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	volumeapi "github.com/qemu-shim/qemu-shim/api/volume/v1"
	"github.com/qemu-shim/qemu-shim/guest/blockdev"
	"github.com/qemu-shim/qemu-shim/internal/nsthread"
)

// VolumeStaging is where a volume's filesystem is mounted first, in the
// guest's own namespace, before it is moved into the container's.
const VolumeStaging = "/run/qemu-shim/volumes"

// volumeFilesystems are the filesystems an operator's disk may hold.
var volumeFilesystems = map[string]bool{"ext4": true, "ext3": true, "ext2": true, "erofs": true, "xfs": true, "vfat": true}

var validSerial = regexp.MustCompile(`^[A-Za-z0-9_-]{1,20}$`)

// volume is a disk mounted in a container: ns is the container's mount
// namespace, held open so the unmount finds it even once the init is gone.
type volume struct {
	container, target string
	ns                *os.File
}

var _ volumeapi.VolumesService = (*Service)(nil)

// Mount mounts a hot-plugged disk in a container's mount namespace: in the
// guest first (the disk found by serial, the mount retried while the disk
// settles), then cloned (open_tree) and moved (move_mount) to the target
// from a thread that joined the namespace of the container's init.
func (s *Service) Mount(ctx context.Context, r *volumeapi.MountRequest) (*volumeapi.MountResponse, error) {
	if !validSerial.MatchString(r.Serial) {
		return nil, fmt.Errorf("disk serial %q: %w", r.Serial, errdefs.ErrInvalidArgument)
	}
	fstype := r.Fstype
	if fstype == "" {
		fstype = "ext4"
	}
	if !volumeFilesystems[fstype] {
		return nil, fmt.Errorf("filesystem %q: want ext2/3/4, erofs, xfs or vfat: %w", fstype, errdefs.ErrInvalidArgument)
	}
	target := filepath.Clean(r.Target)
	if !filepath.IsAbs(r.Target) || target == "/" {
		return nil, fmt.Errorf("mount path %q: want an absolute path other than /: %w", r.Target, errdefs.ErrInvalidArgument)
	}
	c, err := s.container(r.ContainerId)
	if err != nil {
		return nil, err
	}
	c.init.mu.Lock()
	pid, state := c.init.pid, c.init.state
	c.init.mu.Unlock()
	if pid <= 0 || state == procStopped {
		return nil, fmt.Errorf("container %s has no running init to mount in: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	s.volMu.Lock()
	if _, ok := s.volumes[r.Serial]; ok {
		s.volMu.Unlock()
		return nil, fmt.Errorf("disk %s is mounted already: %w", r.Serial, errdefs.ErrAlreadyExists)
	}
	s.volumes[r.Serial] = nil // reserved while mounting
	s.volMu.Unlock()
	v, err := s.mountVolume(ctx, c.id, pid, r.Serial, fstype, target, r.ReadOnly)
	s.volMu.Lock()
	if err != nil {
		delete(s.volumes, r.Serial)
	} else {
		s.volumes[r.Serial] = v
	}
	s.volMu.Unlock()
	if err != nil {
		return nil, err
	}
	return &volumeapi.MountResponse{}, nil
}

func (s *Service) mountVolume(ctx context.Context, id string, pid int, serial, fstype, target string, ro bool) (*volume, error) {
	dev, err := blockdev.Wait(ctx, s.cfg.SysfsRoot, serial, deviceWait)
	if err != nil {
		return nil, err
	}
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if err != nil {
		return nil, fmt.Errorf("container %s: mount namespace: %w", id, err)
	}
	staging := filepath.Join(VolumeStaging, serial)
	if err := os.MkdirAll(staging, 0o700); err != nil {
		ns.Close()
		return nil, err
	}
	defer os.Remove(staging)
	var flags uintptr = unix.MS_NODEV | unix.MS_NOSUID
	if ro {
		flags |= unix.MS_RDONLY
	}
	if err := blockdev.Mount(ctx, dev.Path(), staging, fstype, flags, "", deviceWait); err != nil {
		ns.Close()
		return nil, fmt.Errorf("mount disk %s (%s, %s): %w", serial, dev.Name, fstype, mountErr(err))
	}
	// The clone holds the filesystem once the staging mount is gone.
	tree, err := unix.OpenTree(unix.AT_FDCWD, staging, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	unix.Unmount(staging, unix.MNT_DETACH)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("clone the mount of disk %s: %w", serial, err)
	}
	defer unix.Close(tree)
	err = inMountNamespace(ns, func() error {
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("container %s: make %s: %w", id, target, err)
		}
		if err := unix.MoveMount(tree, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("container %s: mount disk %s at %s: %w", id, serial, target, err)
		}
		return nil
	})
	if err != nil {
		ns.Close()
		return nil, err
	}
	log.G(ctx).WithField("container", id).WithField("disk", serial).WithField("target", target).Info("disk mounted in container")
	return &volume{container: id, target: target, ns: ns}, nil
}

// mountErr says what a mount's errno means for the operator.
func mountErr(err error) error {
	switch {
	case errors.Is(err, unix.EINVAL):
		return fmt.Errorf("%w (no such filesystem on the disk?): %w", err, errdefs.ErrInvalidArgument)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EROFS):
		return fmt.Errorf("%w (a read-only disk: mount it read-only): %w", err, errdefs.ErrFailedPrecondition)
	}
	return err
}

// Unmount unmounts a volume in its container's namespace; force detaches
// it lazily even while busy. A target the container unmounted itself, or a
// volume already dropped with its container, is no error.
func (s *Service) Unmount(ctx context.Context, r *volumeapi.UnmountRequest) (*volumeapi.UnmountResponse, error) {
	s.volMu.Lock()
	v, ok := s.volumes[r.Serial]
	if ok && v == nil {
		s.volMu.Unlock()
		return nil, fmt.Errorf("disk %s is being mounted: %w", r.Serial, errdefs.ErrFailedPrecondition)
	}
	s.volMu.Unlock()
	if !ok {
		return nil, fmt.Errorf("disk %s is not mounted in any container: %w", r.Serial, errdefs.ErrNotFound)
	}
	if err := v.unmount(r.Force); err != nil {
		return nil, err
	}
	s.volMu.Lock()
	if s.volumes[r.Serial] == v {
		delete(s.volumes, r.Serial)
	}
	s.volMu.Unlock()
	v.ns.Close()
	return &volumeapi.UnmountResponse{}, nil
}

func (v *volume) unmount(force bool) error {
	flags := 0
	if force {
		flags = unix.MNT_DETACH
	}
	return inMountNamespace(v.ns, func() error {
		err := unix.Unmount(v.target, flags)
		switch {
		case err == nil, errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil
		case errors.Is(err, unix.EBUSY):
			return fmt.Errorf("container %s: %s is busy (force detaches it lazily): %w", v.container, v.target, errdefs.ErrFailedPrecondition)
		}
		return fmt.Errorf("container %s: unmount %s: %w", v.container, v.target, err)
	})
}

// dropVolumes lazily unmounts a removed container's volumes.
func (s *Service) dropVolumes(ctx context.Context, id string) {
	s.volMu.Lock()
	var drop []*volume
	for serial, v := range s.volumes {
		if v != nil && v.container == id {
			drop = append(drop, v)
			delete(s.volumes, serial)
		}
	}
	s.volMu.Unlock()
	for _, v := range drop {
		if err := v.unmount(true); err != nil {
			log.G(ctx).WithError(err).Warn("unmount a removed container's disk")
		}
		v.ns.Close()
	}
}

// inMountNamespace runs fn on a thread of its own (nsthread) that has
// joined the mount namespace ns. The thread first stops sharing its
// filesystem attributes with the others: setns refuses a shared one.
func inMountNamespace(ns *os.File, fn func() error) error {
	return nsthread.Do(func() error {
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			return fmt.Errorf("unshare filesystem attributes: %w", err)
		}
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNS); err != nil {
			return fmt.Errorf("join the container's mount namespace: %w", err)
		}
		return fn()
	})
}
