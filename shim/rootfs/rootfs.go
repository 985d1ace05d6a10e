package rootfs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Disk is one image for the guest.
type Disk struct {
	Path string
	// Type is the filesystem: erofs or ext4.
	Type     string
	ReadOnly bool
	// Owned disks belong to this container and are removed with it.
	Owned bool
}

// Converter makes disks from mounts.
type Converter struct {
	// LayerCache holds the erofs images of read-only layers.
	LayerCache string
	// UpperSizeMiB is the size of a writable layer's image.
	UpperSizeMiB int
	// MaxAge, if set, is how long a cached layer image nobody has used is
	// kept (see Prune).
	MaxAge time.Duration
}

// UpperImageName is the writable layer's image in the bundle.
const UpperImageName = "rootfs-upper.ext4"

// Convert returns the disks of a rootfs, read-only layers first (topmost
// first), the writable one last.
func (c *Converter) Convert(ctx context.Context, bundle string, mounts []*types.Mount) ([]Disk, error) {
	for i, m := range mounts {
		log.G(ctx).WithField("i", i).WithField("type", m.Type).WithField("source", m.Source).WithField("options", m.Options).Debug("rootfs mount")
	}
	if len(mounts) == 0 {
		return nil, fmt.Errorf("no rootfs mounts (a container without a rootfs is not supported): %w", errdefs.ErrInvalidArgument)
	}
	if isFormatted(mounts) {
		return c.formatted(ctx, bundle, mounts)
	}
	if len(mounts) == 1 {
		m := mounts[0]
		switch m.Type {
		case "overlay":
			return c.overlay(ctx, bundle, m)
		case "bind", "rbind", "":
			if !hasOption(m.Options, "bind") && !hasOption(m.Options, "rbind") && m.Type == "" {
				break
			}
			if hasOption(m.Options, "ro") {
				layer, err := c.layer(ctx, m.Source)
				if err != nil {
					return nil, err
				}
				return []Disk{layer}, nil
			}
			upper, err := c.upper(ctx, bundle, m.Source)
			if err != nil {
				return nil, err
			}
			return []Disk{upper}, nil
		}
	}
	var disks []Disk
	for _, m := range mounts {
		switch {
		case (m.Type == "erofs" || m.Type == "ext4") && isFile(m.Source):
			// The erofs snapshotter's layers (and plain images): as they are.
			if m.Type == "erofs" {
				if err := checkErofs(m); err != nil {
					return nil, err
				}
			}
			ro := m.Type == "erofs" || hasOption(m.Options, "ro")
			disks = append(disks, Disk{Path: m.Source, Type: m.Type, ReadOnly: ro})
		default:
			return nil, fmt.Errorf("rootfs mount type %q (source %s) is not supported: use containerd's overlayfs or erofs snapshotter: %w", m.Type, m.Source, errdefs.ErrNotImplemented)
		}
	}
	// Read-only layers first, the writable one last.
	var ro, rw []Disk
	for _, d := range disks {
		if d.ReadOnly {
			ro = append(ro, d)
		} else {
			rw = append(rw, d)
		}
	}
	if len(rw) > 1 {
		return nil, fmt.Errorf("rootfs has %d writable layers: %w", len(rw), errdefs.ErrInvalidArgument)
	}
	return append(ro, rw...), nil
}

// overlay converts an overlayfs snapshotter mount.
func (c *Converter) overlay(ctx context.Context, bundle string, m *types.Mount) ([]Disk, error) {
	var lowers []string
	upper := ""
	for _, o := range m.Options {
		k, v, _ := strings.Cut(o, "=")
		switch k {
		case "lowerdir":
			lowers = strings.Split(v, ":")
		case "upperdir":
			upper = v
		}
	}
	if len(lowers) == 0 {
		return nil, fmt.Errorf("overlay rootfs without lowerdir (options %v): %w", m.Options, errdefs.ErrInvalidArgument)
	}
	var disks []Disk
	for _, l := range lowers {
		d, err := c.layer(ctx, l)
		if err != nil {
			return nil, err
		}
		disks = append(disks, d)
	}
	if upper != "" {
		d, err := c.upper(ctx, bundle, upper)
		if err != nil {
			return nil, err
		}
		disks = append(disks, d)
	}
	return disks, nil
}

// layer returns the erofs image of a read-only layer directory, making it
// once. Committed snapshot directories never change, so the directory
// names the image: its path and its identity (device, inode, change
// time), so that a directory made again at the same path (containerd's
// root wiped, its snapshot numbers counted again) is not taken for the
// one cached before.
func (c *Converter) layer(ctx context.Context, dir string) (Disk, error) {
	if !filepath.IsAbs(dir) {
		return Disk{}, fmt.Errorf("layer directory %q is not absolute: %w", dir, errdefs.ErrInvalidArgument)
	}
	st, err := os.Stat(dir)
	if err != nil || !st.IsDir() {
		return Disk{}, fmt.Errorf("layer directory %s: %v: %w", dir, err, errdefs.ErrNotFound)
	}
	key := filepath.Clean(dir)
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		key += fmt.Sprintf("\x00%d:%d:%d.%d", sys.Dev, sys.Ino, sys.Ctim.Sec, sys.Ctim.Nsec)
	}
	sum := sha256.Sum256([]byte(key))
	image := filepath.Join(c.LayerCache, hex.EncodeToString(sum[:16])+".erofs")
	if _, err := os.Stat(image); err == nil {
		// Used now: the image's time is when a container last used it.
		now := time.Now()
		os.Chtimes(image, now, now)
		return Disk{Path: image, Type: "erofs", ReadOnly: true}, nil
	}
	if err := os.MkdirAll(c.LayerCache, 0o700); err != nil {
		return Disk{}, fmt.Errorf("layer cache: %w", err)
	}
	tmp, err := os.CreateTemp(c.LayerCache, ".build-*.erofs")
	if err != nil {
		return Disk{}, fmt.Errorf("layer cache: %w", err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	// Ownership, modes, device nodes (overlay whiteouts) and xattrs
	// (opaque directories) are kept: they are the layer.
	if out, err := exec.CommandContext(ctx, "mkfs.erofs", "--quiet", "-T0", tmp.Name(), dir).CombinedOutput(); err != nil {
		return Disk{}, fmt.Errorf("convert layer %s to erofs: %v: %s", dir, err, out)
	}
	// Concurrent shims may build the same layer: the last rename wins, and
	// both images are the same.
	if err := os.Rename(tmp.Name(), image); err != nil {
		return Disk{}, fmt.Errorf("layer cache: %w", err)
	}
	log.G(ctx).WithField("layer", dir).WithField("image", image).Debug("converted layer to erofs")
	return Disk{Path: image, Type: "erofs", ReadOnly: true}, nil
}

// upper makes the writable layer's ext4 image in the bundle, holding what
// the directory already holds (normally nothing).
func (c *Converter) upper(ctx context.Context, bundle, dir string) (Disk, error) {
	image := filepath.Join(bundle, UpperImageName)
	os.Remove(image)
	args := []string{"-O", "^has_journal"}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return Disk{}, fmt.Errorf("writable layer %s: %w", dir, err)
	}
	var staging string
	if len(entries) > 0 {
		// The guest keeps the layer in upper/ (work/ beside it).
		staging, err = os.MkdirTemp(bundle, ".upper-")
		if err != nil {
			return Disk{}, err
		}
		defer os.RemoveAll(staging)
		if out, err := exec.CommandContext(ctx, "cp", "-a", dir, filepath.Join(staging, "upper")).CombinedOutput(); err != nil {
			return Disk{}, fmt.Errorf("copy writable layer: %v: %s", err, out)
		}
		args = append(args, "-d", staging)
	}
	args = append(args, image, fmt.Sprintf("%dM", c.UpperSizeMiB))
	if err := mkfsExt4(ctx, []string{"root_owner=0:0"}, args...); err != nil {
		os.Remove(image)
		return Disk{}, fmt.Errorf("make writable layer image: %w", err)
	}
	return Disk{Path: image, Type: "ext4", Owned: true}, nil
}

func hasOption(opts []string, o string) bool {
	for _, x := range opts {
		if x == o {
			return true
		}
	}
	return false
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// buildMaxAge is how old an unfinished build in the cache (of a shim that
// died converting) is when it is removed.
const buildMaxAge = time.Hour

// Prune removes the layer images no container has used for MaxAge, and
// unfinished builds. An image still attached to a running VM may go: QEMU
// holds it open, and the next container that needs the layer converts it
// again. Concurrent shims may prune at once; a file already gone is not
// an error.
func (c *Converter) Prune(ctx context.Context) {
	if c.MaxAge <= 0 || c.LayerCache == "" {
		return
	}
	entries, err := os.ReadDir(c.LayerCache)
	if err != nil {
		return
	}
	now := time.Now()
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		age := now.Sub(info.ModTime())
		build := strings.HasPrefix(e.Name(), ".build-")
		if (build && age > buildMaxAge) || (!build && strings.HasSuffix(e.Name(), ".erofs") && age > c.MaxAge) {
			if err := os.Remove(filepath.Join(c.LayerCache, e.Name())); err == nil {
				log.G(ctx).WithField("image", e.Name()).WithField("unused", age.Round(time.Minute)).Debug("layer image pruned")
			}
		}
	}
}
