package rootfs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
)

// The mounts containerd 2.4.2's erofs snapshotter returns for a container
// (plugins/snapshots/erofs: mounts, overlayMounts, parentMounts) as the
// shim receives them once it claims the format, mkdir and mkfs transforms
// and the erofs type.
func TestErofsSnapshotterMounts(t *testing.T) {
	if _, err := os.Stat("/usr/sbin/mkfs.ext4"); err != nil {
		if _, err := os.Stat("/sbin/mkfs.ext4"); err != nil {
			t.Skip("skipping: mkfs.ext4 missing")
		}
	}
	dir := t.TempDir()
	snap := func(id string) string { return filepath.Join(dir, "snapshots", id) }
	layer := func(id string) string { return filepath.Join(snap(id), "layer.erofs") }
	for _, id := range []string{"1", "2", "3", "9"} {
		os.MkdirAll(filepath.Join(snap(id), "fs"), 0o755)
		os.MkdirAll(filepath.Join(snap(id), "work"), 0o755)
		if id != "9" {
			os.WriteFile(layer(id), []byte("erofs"), 0o644)
		}
	}
	erofs := func(id string, extra ...string) *types.Mount {
		return &types.Mount{Type: "erofs", Source: layer(id), Options: append([]string{"ro", "loop"}, extra...)}
	}
	rwImage := filepath.Join(snap("9"), "rwlayer.img")
	mkfs := func(extra ...string) *types.Mount {
		return &types.Mount{Type: "mkfs/ext4", Source: rwImage, Options: append([]string{"X-containerd.mkfs.fs=ext4", "X-containerd.mkfs.size=67108864", "rw", "loop"}, extra...)}
	}
	ovl := func(opts ...string) *types.Mount {
		return &types.Mount{Type: "format/mkdir/overlay", Source: "overlay", Options: opts}
	}
	dirUpper := []string{"workdir=" + filepath.Join(snap("9"), "work"), "upperdir=" + filepath.Join(snap("9"), "fs")}
	blockUpper := []string{"X-containerd.mkdir.path={{ mount 0 }}/upper:0755", "X-containerd.mkdir.path={{ mount 0 }}/work:0755", "workdir={{ mount 0 }}/work", "upperdir={{ mount 0 }}/upper"}
	bundleUpper := Disk{Type: "ext4", Owned: true} // Path: the bundle's
	ro := func(id string) Disk { return Disk{Path: layer(id), Type: "erofs", ReadOnly: true} }

	for _, tc := range []struct {
		name   string
		mounts []*types.Mount
		want   []Disk
		err    error
		errHas string
	}{
		{name: "directory mode, one layer",
			mounts: []*types.Mount{erofs("1"), ovl(append(dirUpper, "lowerdir={{ mount 0 }}")...)},
			want:   []Disk{ro("1"), bundleUpper}},
		{name: "directory mode, three layers",
			mounts: []*types.Mount{erofs("3"), erofs("2"), erofs("1"), ovl(append(dirUpper, "lowerdir={{ overlay 0 2 }}", "index=off")...)},
			want:   []Disk{ro("3"), ro("2"), ro("1"), bundleUpper}},
		{name: "reversed overlay range",
			mounts: []*types.Mount{erofs("1"), erofs("2"), erofs("3"), ovl(append(dirUpper, "lowerdir={{ overlay 2 0 }}")...)},
			want:   []Disk{ro("3"), ro("2"), ro("1"), bundleUpper}},
		{name: "block mode, two layers",
			mounts: []*types.Mount{mkfs(), erofs("2"), erofs("1"), ovl(append(blockUpper, "lowerdir={{ overlay 1 2 }}")...)},
			want:   []Disk{ro("2"), ro("1"), {Path: rwImage, Type: "ext4"}}},
		{name: "block mode, one layer, image already made",
			mounts: []*types.Mount{mkfs(), erofs("1"), ovl(append(blockUpper, "lowerdir={{ mount 1 }}")...)},
			want:   []Disk{ro("1"), {Path: rwImage, Type: "ext4"}}},
		{name: "populated active snapshot: read-only overlay",
			mounts: []*types.Mount{erofs("2"), erofs("1"), ovl("ro", "lowerdir={{ overlay 0 1 }}")},
			want:   []Disk{ro("2"), ro("1")}},
		{name: "view of one lower",
			mounts: []*types.Mount{erofs("1"), {Type: "format/bind", Source: "{{ mount 0 }}", Options: []string{"ro", "ro", "rbind"}}},
			want:   []Disk{ro("1")}},
		{name: "merged fsmeta (multi-device)",
			mounts: []*types.Mount{erofs("2", "device="+layer("1"), "device="+layer("2")), ovl(append(dirUpper, "lowerdir={{ mount 0 }}")...)},
			err:    errdefs.ErrNotImplemented, errHas: "multi-device"},
		{name: "dm-verity",
			mounts: []*types.Mount{erofs("1", "X-containerd.dmverity="+layer("1")+".dmverity"), ovl(append(dirUpper, "lowerdir={{ mount 0 }}")...)},
			err:    errdefs.ErrNotImplemented, errHas: "dm-verity"},
		{name: "ID-mapped",
			mounts: []*types.Mount{erofs("1"), ovl(append(dirUpper, "uidmap=0:1000:65536", "lowerdir={{ mount 0 }}")...)},
			err:    errdefs.ErrNotImplemented, errHas: "uidmap"},
		{name: "block mode without layers",
			mounts: []*types.Mount{mkfs(), {Type: "format/mkdir/bind", Source: "{{ mount 0 }}/upper", Options: []string{"X-containerd.mkdir.path={{ mount 0 }}/upper:0755", "rw", "rbind"}}},
			err:    errdefs.ErrNotImplemented, errHas: `"format/mkdir/bind"`},
		{name: "xfs writable image",
			mounts: []*types.Mount{{Type: "mkfs/xfs", Source: rwImage + ".xfs", Options: []string{"X-containerd.mkfs.fs=xfs", "X-containerd.mkfs.size=64m"}}, erofs("1"), ovl(append(blockUpper, "lowerdir={{ mount 1 }}")...)},
			err:    errdefs.ErrNotImplemented, errHas: `"mkfs/xfs"`},
		{name: "upper elsewhere in the image",
			mounts: []*types.Mount{mkfs(), erofs("1"), ovl("workdir={{ mount 0 }}/w", "upperdir={{ mount 0 }}/u", "lowerdir={{ mount 1 }}")},
			err:    errdefs.ErrNotImplemented, errHas: "upper/"},
		{name: "writable image as a lower",
			mounts: []*types.Mount{mkfs(), erofs("1"), ovl(append(blockUpper, "lowerdir={{ overlay 0 1 }}")...)},
			err:    errdefs.ErrNotImplemented, errHas: `"mkfs/ext4"`},
		{name: "out of range",
			mounts: []*types.Mount{erofs("1"), ovl(append(dirUpper, "lowerdir={{ overlay 0 4 }}")...)},
			err:    errdefs.ErrInvalidArgument, errHas: "mount 1 of 1"},
		{name: "unused mount",
			mounts: []*types.Mount{erofs("2"), erofs("1"), ovl(append(dirUpper, "lowerdir={{ mount 1 }}")...)},
			err:    errdefs.ErrNotImplemented, errHas: "not used"},
		{name: "other template",
			mounts: []*types.Mount{erofs("1"), ovl(append(dirUpper, "lowerdir={{ source 0 }}")...)},
			err:    errdefs.ErrNotImplemented, errHas: "{{ source 0 }}"},
		{name: "unknown type",
			mounts: []*types.Mount{erofs("1"), {Type: "format/fuse3.squashfuse", Source: "{{ mount 0 }}"}},
			err:    errdefs.ErrNotImplemented, errHas: `"format/fuse3.squashfuse"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Converter{LayerCache: filepath.Join(dir, "cache"), UpperSizeMiB: 16}
			bundle := t.TempDir()
			disks, err := c.Convert(context.Background(), bundle, tc.mounts)
			if tc.err != nil {
				if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("got %v, want %v naming %s", err, tc.err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for i := range tc.want {
				if tc.want[i] == bundleUpper {
					tc.want[i].Path = filepath.Join(bundle, UpperImageName)
				}
			}
			if len(disks) != len(tc.want) {
				t.Fatalf("got %+v, want %+v", disks, tc.want)
			}
			for i := range disks {
				if disks[i] != tc.want[i] {
					t.Errorf("disk %d: got %+v, want %+v", i, disks[i], tc.want[i])
				}
				if !isFile(disks[i].Path) {
					t.Errorf("disk %d: %s is missing", i, disks[i].Path)
				}
			}
		})
	}
	// The block-mode image was made once, at the size asked for.
	if st, err := os.Stat(rwImage); err != nil || st.Size() != 64<<20 {
		t.Errorf("writable image: %v, %v", st, err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"67108864": 64 << 20, "64m": 64 << 20, "64MiB": 64 << 20, "1G": 1 << 30, "2k": 2048} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("%q: %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1", "x", "12q"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}
