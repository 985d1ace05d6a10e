package task

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/qemu-shim/qemu-shim/api/wire"
	"github.com/qemu-shim/qemu-shim/guest/blockdev"
)

// rootfsFilesystems are the layer filesystems the host may send.
var rootfsFilesystems = map[string]bool{"ext4": true, "erofs": true}

const deviceWait = 20 * time.Second

// mountRootfs assembles the container's root at bundle/rootfs from the
// disks the host attached: read-only layers become overlay's lower
// directories (the first listed on top), the one writable disk holds the
// upper and work directories. A single disk is the rootfs itself. It
// returns what it mounted, innermost last, for unmountAll.
func mountRootfs(ctx context.Context, sysfs, bundle string, rootfs []*types.Mount) (mounted []string, retErr error) {
	defer func() {
		if retErr != nil {
			unmountAll(mounted)
			mounted = nil
		}
	}()
	if len(rootfs) == 0 {
		return nil, fmt.Errorf("no rootfs mounts: %w", errdefs.ErrInvalidArgument)
	}
	if len(rootfs) > 128 {
		return nil, fmt.Errorf("%d rootfs layers: at most 128: %w", len(rootfs), errdefs.ErrInvalidArgument)
	}
	target := filepath.Join(bundle, "rootfs")
	if err := os.MkdirAll(target, 0o755); err != nil {
		return nil, err
	}
	var lowers []string
	upper := ""
	for i, m := range rootfs {
		serial, ok := strings.CutPrefix(m.Source, wire.SerialPrefix)
		if !ok {
			return mounted, fmt.Errorf("rootfs mount %d: source %q: want %sID: %w", i, m.Source, wire.SerialPrefix, errdefs.ErrInvalidArgument)
		}
		if !rootfsFilesystems[m.Type] {
			return mounted, fmt.Errorf("rootfs mount %d: type %q: want ext4 or erofs: %w", i, m.Type, errdefs.ErrInvalidArgument)
		}
		ro := slices.Contains(m.Options, "ro") || m.Type == "erofs"
		dev, err := blockdev.Wait(ctx, sysfs, serial, deviceWait)
		if err != nil {
			return mounted, fmt.Errorf("rootfs layer %d: %w", i, err)
		}
		dir := target
		if len(rootfs) > 1 {
			dir = filepath.Join(bundle, "layers", strconv.Itoa(i))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return mounted, err
			}
		}
		var flags uintptr = unix.MS_NODEV
		if ro {
			flags |= unix.MS_RDONLY
		}
		if err := blockdev.Mount(ctx, dev.Path(), dir, m.Type, flags, "", deviceWait); err != nil {
			return mounted, fmt.Errorf("mount rootfs layer %d (%s, serial %s) on %s: %w", i, m.Type, serial, dir, err)
		}
		mounted = append(mounted, dir)
		if !ro {
			if upper != "" {
				return mounted, fmt.Errorf("rootfs has two writable layers: %w", errdefs.ErrInvalidArgument)
			}
			upper = dir
		} else {
			lowers = append(lowers, dir)
		}
	}
	if len(rootfs) == 1 {
		return mounted, nil
	}
	if len(lowers) == 0 {
		return mounted, fmt.Errorf("rootfs has several layers but none read-only: %w", errdefs.ErrInvalidArgument)
	}
	// The mount's options must fit in one page: the layers go by their
	// open descriptors (/proc/self/fd/N, 17 bytes or so) instead of their
	// paths, so that the full 128 layers fit whatever the bundle's path.
	var lowerRefs []string
	for _, dir := range lowers {
		fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return mounted, fmt.Errorf("open rootfs layer %s: %w", dir, err)
		}
		defer unix.Close(fd)
		lowerRefs = append(lowerRefs, "/proc/self/fd/"+strconv.Itoa(fd))
	}
	opts := "lowerdir=" + strings.Join(lowerRefs, ":")
	if upper != "" {
		up, work := filepath.Join(upper, "upper"), filepath.Join(upper, "work")
		for _, d := range []string{up, work} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return mounted, err
			}
		}
		opts += ",upperdir=" + up + ",workdir=" + work
	}
	if len(lowers) == 1 && upper == "" {
		// overlay needs two lowers without an upper; a bind does the same.
		if err := unix.Mount(lowers[0], target, "", unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			return mounted, fmt.Errorf("bind rootfs: %w", err)
		}
	} else if err := unix.Mount("overlay", target, "overlay", 0, opts); err != nil {
		return mounted, fmt.Errorf("mount overlay rootfs: %w", err)
	}
	return append(mounted, target), nil
}

// unmountAll unmounts in reverse order, detaching what is busy.
func unmountAll(mounted []string) error {
	var errs []error
	for i := len(mounted) - 1; i >= 0; i-- {
		if err := unix.Unmount(mounted[i], 0); err != nil && !errors.Is(err, unix.EINVAL) {
			if err := unix.Unmount(mounted[i], unix.MNT_DETACH); err != nil {
				errs = append(errs, fmt.Errorf("unmount %s: %w", mounted[i], err))
			}
		}
	}
	return errors.Join(errs...)
}
