package rootfs

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
)

// MountCapabilities are the mount types and transforms the shim performs
// itself, advertised to containerd (2.4 and later) in the bootstrap result
// so that its mount manager passes them through instead of mounting them on
// the host: erofs layer blobs become read-only disks as they are, the
// "format" templates ({{ mount N }}, {{ overlay A B }}) are resolved to
// those disks, "mkdir" of the writable layer's upper/ and work/ is what the
// guest does, and "mkfs" makes the erofs snapshotter's block-mode ext4 image
// (see formatted).
func MountCapabilities() *types.MountCapabilities {
	return &types.MountCapabilities{
		Types:      []string{"erofs", "ext4"},
		Transforms: []string{"format", "mkdir", "mkfs"},
	}
}

// Option prefixes of containerd's mount manager.
const (
	optMkdir = "X-containerd.mkdir.path="
	optMkfs  = "X-containerd.mkfs."
)

var (
	mountRef   = regexp.MustCompile(`^\{\{\s*mount\s+(\d+)\s*\}\}(/.*)?$`)
	overlayRef = regexp.MustCompile(`^\{\{\s*overlay\s+(\d+)\s+(\d+)\s*\}\}$`)
)

// isFormatted reports whether mounts need containerd's mount manager's
// transforms or templates: the erofs snapshotter's shapes.
func isFormatted(mounts []*types.Mount) bool {
	for _, m := range mounts {
		if strings.Contains(m.Type, "/") || strings.Contains(m.Source, "{{") {
			return true
		}
		for _, o := range m.Options {
			if strings.Contains(o, "{{") {
				return true
			}
		}
	}
	return false
}

// formatted converts mounts in containerd's mount manager format: every
// mount but the last is a disk image the last one refers to by index,
// as containerd 2.4's erofs snapshotter returns them:
//
//	erofs <snapshot>/layer.erofs ro,loop               (one per layer, topmost first)
//	format/mkdir/overlay overlay lowerdir={{ mount 0 }} or {{ overlay A B }},
//	    upperdir=<snapshot>/fs,workdir=<snapshot>/work  (directory mode, the default)
//
// and in block mode (default_size set) an ext4 image first:
//
//	mkfs/ext4 <snapshot>/rwlayer.img X-containerd.mkfs.fs=ext4,X-containerd.mkfs.size=N,rw,loop
//	erofs ...
//	format/mkdir/overlay overlay X-containerd.mkdir.path={{ mount 0 }}/upper:0755, ...,
//	    workdir={{ mount 0 }}/work,upperdir={{ mount 0 }}/upper,lowerdir={{ mount 1 }}
//
// A read-only view of one layer is "format/bind {{ mount N }} ro,rbind".
// An upper directory becomes the container's ext4 image as the overlayfs
// snapshotter's does; a block-mode image is attached writable as it is,
// its upper/ and work/ directories being the guest's layout.
func (c *Converter) formatted(ctx context.Context, bundle string, mounts []*types.Mount) ([]Disk, error) {
	last := mounts[len(mounts)-1]
	pre := mounts[:len(mounts)-1]
	for _, m := range pre {
		if strings.Contains(m.Source, "{{") || strings.HasPrefix(m.Type, "format/") {
			return nil, fmt.Errorf("rootfs mount type %q (source %s) refers to another mount before the last one: %w", m.Type, m.Source, errdefs.ErrNotImplemented)
		}
	}
	used := make([]bool, len(pre))
	ref := func(i int) (*types.Mount, error) {
		if i < 0 || i >= len(pre) {
			return nil, fmt.Errorf("rootfs mount template refers to mount %d of %d: %w", i, len(pre), errdefs.ErrInvalidArgument)
		}
		used[i] = true
		return pre[i], nil
	}
	// lowerDisk is pre mount i as a read-only layer.
	lowerDisk := func(i int) (Disk, error) {
		m, err := ref(i)
		if err != nil {
			return Disk{}, err
		}
		if m.Type != "erofs" || !isFile(m.Source) {
			return Disk{}, fmt.Errorf("rootfs lower layer %d: mount type %q (source %s): want an erofs image file: %w", i, m.Type, m.Source, errdefs.ErrNotImplemented)
		}
		if err := checkErofs(m); err != nil {
			return Disk{}, err
		}
		return Disk{Path: m.Source, Type: "erofs", ReadOnly: true}, nil
	}

	typ := last.Type
	var transforms []string
	for {
		t, rest, ok := strings.Cut(typ, "/")
		if !ok {
			break
		}
		transforms = append(transforms, t)
		typ = rest
	}
	for _, t := range transforms {
		if t != "format" && t != "mkdir" {
			return nil, fmt.Errorf("rootfs mount type %q: transform %q is not supported: %w", last.Type, t, errdefs.ErrNotImplemented)
		}
	}

	var disks []Disk
	switch typ {
	case "bind", "rbind":
		i, sub, ok := parseMountRef(last.Source)
		if !ok || sub != "" || !hasOption(last.Options, "ro") {
			return nil, fmt.Errorf("rootfs mount type %q (source %s, options %v): only a read-only bind of a whole layer is supported (a writable rootfs without image layers is not): %w", last.Type, last.Source, last.Options, errdefs.ErrNotImplemented)
		}
		d, err := lowerDisk(i)
		if err != nil {
			return nil, err
		}
		disks = append(disks, d)
	case "overlay":
		var lowers, upper, work string
		var mkdirs []string
		for _, o := range last.Options {
			if p, ok := strings.CutPrefix(o, optMkdir); ok {
				mkdirs = append(mkdirs, p)
				continue
			}
			k, v, _ := strings.Cut(o, "=")
			switch k {
			case "lowerdir":
				lowers = v
			case "upperdir":
				upper = v
			case "workdir":
				work = v
			case "uidmap", "gidmap":
				return nil, fmt.Errorf("rootfs overlay option %s: ID-mapped layers are not supported: %w", k, errdefs.ErrNotImplemented)
			}
		}
		if lowers == "" {
			return nil, fmt.Errorf("overlay rootfs without lowerdir (options %v): %w", last.Options, errdefs.ErrInvalidArgument)
		}
		for _, l := range strings.Split(lowers, ":") {
			if a, b, ok := parseOverlayRef(l); ok {
				step := 1
				if a > b {
					step = -1
				}
				for i := a; ; i += step {
					d, err := lowerDisk(i)
					if err != nil {
						return nil, err
					}
					disks = append(disks, d)
					if i == b {
						break
					}
				}
				continue
			}
			if i, sub, ok := parseMountRef(l); ok && sub == "" {
				d, err := lowerDisk(i)
				if err != nil {
					return nil, err
				}
				disks = append(disks, d)
				continue
			}
			if strings.Contains(l, "{{") {
				return nil, fmt.Errorf("rootfs lowerdir %q: template not supported: %w", l, errdefs.ErrNotImplemented)
			}
			d, err := c.layer(ctx, l)
			if err != nil {
				return nil, err
			}
			disks = append(disks, d)
		}
		if upper != "" {
			d, err := c.formattedUpper(ctx, bundle, upper, work, mkdirs, ref)
			if err != nil {
				return nil, err
			}
			disks = append(disks, d)
		} else if len(mkdirs) > 0 {
			return nil, fmt.Errorf("rootfs overlay without upperdir makes directories %v: %w", mkdirs, errdefs.ErrNotImplemented)
		}
	default:
		return nil, fmt.Errorf("rootfs mount type %q (source %s) is not supported: use containerd's overlayfs or erofs snapshotter: %w", last.Type, last.Source, errdefs.ErrNotImplemented)
	}
	for i, u := range used {
		if !u {
			return nil, fmt.Errorf("rootfs mount %d (type %q, source %s) is not used by the last mount %q: %w", i, pre[i].Type, pre[i].Source, last.Type, errdefs.ErrNotImplemented)
		}
	}
	return disks, nil
}

// formattedUpper is an overlay's writable layer: a directory (the erofs
// snapshotter's directory mode) or {{ mount K }}/upper of an ext4 image
// (its block mode), whose upper/ and work/ the guest makes.
func (c *Converter) formattedUpper(ctx context.Context, bundle, upper, work string, mkdirs []string, ref func(int) (*types.Mount, error)) (Disk, error) {
	k, sub, ok := parseMountRef(upper)
	if !ok {
		if strings.Contains(upper, "{{") {
			return Disk{}, fmt.Errorf("rootfs upperdir %q: template not supported: %w", upper, errdefs.ErrNotImplemented)
		}
		if len(mkdirs) > 0 {
			return Disk{}, fmt.Errorf("rootfs overlay makes directories %v beside upper directory %s: %w", mkdirs, upper, errdefs.ErrNotImplemented)
		}
		return c.upper(ctx, bundle, upper)
	}
	// The guest's layout: upper/ and work/ at the image's top.
	if sub != "/upper" {
		return Disk{}, fmt.Errorf("rootfs upperdir %q: the guest keeps the writable layer in upper/ of its image: %w", upper, errdefs.ErrNotImplemented)
	}
	if wk, wsub, ok := parseMountRef(work); work != "" && (!ok || wk != k || wsub != "/work") {
		return Disk{}, fmt.Errorf("rootfs workdir %q: the guest keeps overlay's work directory in work/ beside upper/: %w", work, errdefs.ErrNotImplemented)
	}
	for _, p := range mkdirs {
		dir, _, _ := strings.Cut(p, ":")
		mk, msub, ok := parseMountRef(dir)
		if !ok || mk != k || (msub != "/upper" && msub != "/work") {
			return Disk{}, fmt.Errorf("rootfs mkdir %q: only the writable layer's upper/ and work/ are made (by the guest): %w", p, errdefs.ErrNotImplemented)
		}
	}
	m, err := ref(k)
	if err != nil {
		return Disk{}, err
	}
	return c.writableImage(ctx, m)
}

// writableImage is an ext4 image mount (mkfs/ext4 or ext4) as a writable
// disk, made as containerd's mount manager makes it when it does not exist.
// It belongs to the snapshot, not the container.
func (c *Converter) writableImage(ctx context.Context, m *types.Mount) (Disk, error) {
	if hasOption(m.Options, "ro") {
		return Disk{}, fmt.Errorf("rootfs writable layer %s is read-only: %w", m.Source, errdefs.ErrInvalidArgument)
	}
	switch m.Type {
	case "ext4":
		if !isFile(m.Source) {
			return Disk{}, fmt.Errorf("rootfs writable layer %s: not an image file: %w", m.Source, errdefs.ErrNotImplemented)
		}
	case "mkfs/ext4":
		fs, uuid := "ext4", ""
		var size int64
		for _, o := range m.Options {
			kv, ok := strings.CutPrefix(o, optMkfs)
			if !ok {
				continue
			}
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "fs":
				fs = v
			case "uuid":
				uuid = v
			case "size":
				n, err := parseSize(v)
				if err != nil {
					return Disk{}, fmt.Errorf("rootfs writable layer %s: option %s: %v: %w", m.Source, o, err, errdefs.ErrInvalidArgument)
				}
				size = n
			default:
				return Disk{}, fmt.Errorf("rootfs writable layer %s: option %s is not supported: %w", m.Source, o, errdefs.ErrNotImplemented)
			}
		}
		if fs != "ext4" {
			return Disk{}, fmt.Errorf("rootfs writable layer %s: filesystem %q: only ext4 is supported: %w", m.Source, fs, errdefs.ErrNotImplemented)
		}
		if _, err := os.Stat(m.Source); os.IsNotExist(err) {
			if err := makeExt4(ctx, m.Source, size, uuid); err != nil {
				return Disk{}, err
			}
		} else if err != nil {
			return Disk{}, fmt.Errorf("rootfs writable layer: %w", err)
		} else if !isFile(m.Source) {
			return Disk{}, fmt.Errorf("rootfs writable layer %s: not an image file: %w", m.Source, errdefs.ErrInvalidArgument)
		}
	default:
		return Disk{}, fmt.Errorf("rootfs writable layer: mount type %q (source %s) is not supported: want an ext4 image: %w", m.Type, m.Source, errdefs.ErrNotImplemented)
	}
	return Disk{Path: m.Source, Type: "ext4"}, nil
}

// makeExt4 makes an empty ext4 image of size bytes at path, as
// containerd's mkfs transform does.
func makeExt4(ctx context.Context, path string, size int64, uuid string) (retErr error) {
	if size <= 0 {
		return fmt.Errorf("rootfs writable layer %s: no %ssize: %w", path, optMkfs, errdefs.ErrInvalidArgument)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return fmt.Errorf("rootfs writable layer: %w", err)
	}
	defer func() {
		if retErr != nil {
			os.Remove(path)
		}
	}()
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		return fmt.Errorf("rootfs writable layer: %w", err)
	}
	var args []string
	if uuid != "" {
		args = append(args, "-U", uuid)
	}
	if err := mkfsExt4(ctx, nil, append(args, path)...); err != nil {
		return fmt.Errorf("make writable layer image %s: %w", path, err)
	}
	return nil
}

// checkErofs refuses erofs mounts the guest cannot mount from one disk.
func checkErofs(m *types.Mount) error {
	for _, o := range m.Options {
		switch {
		case strings.HasPrefix(o, "device="):
			return fmt.Errorf("rootfs mount %s with %s: multi-device erofs is not supported (set the erofs snapshotter's max_unmerged_layers to 1 or use the overlayfs snapshotter): %w", m.Source, o, errdefs.ErrNotImplemented)
		case strings.HasPrefix(o, "X-containerd.dmverity="):
			return fmt.Errorf("rootfs mount %s with %s: dm-verity erofs layers are not supported (set the erofs snapshotter's dmverity_mode to \"off\"): %w", m.Source, o, errdefs.ErrNotImplemented)
		}
	}
	return nil
}

func parseMountRef(s string) (int, string, bool) {
	m := mountRef.FindStringSubmatch(s)
	if m == nil {
		return 0, "", false
	}
	i, err := strconv.Atoi(m[1])
	return i, m[2], err == nil
}

func parseOverlayRef(s string) (int, int, bool) {
	m := overlayRef.FindStringSubmatch(s)
	if m == nil {
		return 0, 0, false
	}
	a, err1 := strconv.Atoi(m[1])
	b, err2 := strconv.Atoi(m[2])
	return a, b, err1 == nil && err2 == nil
}

// parseSize reads a size as containerd's mkfs transform does (go-units'
// RAMInBytes): bytes, or with a binary k, m, g or t suffix ("64m", "1GiB").
func parseSize(s string) (int64, error) {
	v := strings.ToLower(strings.TrimSpace(s))
	v = strings.TrimSuffix(strings.TrimSuffix(v, "b"), "i")
	mult := int64(1)
	if n := len(v); n > 0 {
		if i := strings.IndexByte("kmgt", v[n-1]); i >= 0 {
			mult = int64(1) << (10 * (i + 1))
			v = v[:n-1]
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}
