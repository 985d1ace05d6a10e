package rootfs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
)

func TestOverlayBecomesErofsAndExt4(t *testing.T) {
	if _, err := os.Stat("/usr/bin/mkfs.erofs"); err != nil {
		t.Skip("skipping: mkfs.erofs missing (make deps)")
	}
	dir := t.TempDir()
	for _, l := range []string{"l1", "l2", "upper", "work", "bundle"} {
		os.MkdirAll(filepath.Join(dir, l), 0o755)
	}
	os.WriteFile(filepath.Join(dir, "l1", "a"), []byte("a"), 0o644)
	os.WriteFile(filepath.Join(dir, "l2", "b"), []byte("b"), 0o644)
	c := &Converter{LayerCache: filepath.Join(dir, "cache"), UpperSizeMiB: 16}
	m := &types.Mount{Type: "overlay", Source: "overlay", Options: []string{
		"index=off", "lowerdir=" + filepath.Join(dir, "l1") + ":" + filepath.Join(dir, "l2"),
		"upperdir=" + filepath.Join(dir, "upper"), "workdir=" + filepath.Join(dir, "work"),
	}}
	ctx := context.Background()
	disks, err := c.Convert(ctx, filepath.Join(dir, "bundle"), []*types.Mount{m})
	if err != nil {
		t.Fatal(err)
	}
	if len(disks) != 3 || disks[0].Type != "erofs" || !disks[0].ReadOnly || disks[2].Type != "ext4" || disks[2].ReadOnly || !disks[2].Owned {
		t.Fatalf("got %+v", disks)
	}
	// The second container from the same image reuses the cached layers.
	st, _ := os.Stat(disks[0].Path)
	again, err := c.Convert(ctx, filepath.Join(dir, "bundle"), []*types.Mount{m})
	if err != nil {
		t.Fatal(err)
	}
	st2, _ := os.Stat(again[0].Path)
	if again[0].Path != disks[0].Path || !os.SameFile(st, st2) {
		t.Error("layer image rebuilt instead of reused")
	}
}

// A layer directory made again at a cached one's path (containerd's root
// wiped, its snapshot numbers reused) gets its own image, never the old
// one's.
func TestRemadeLayerDirectoryIsConvertedAgain(t *testing.T) {
	if _, err := os.Stat("/usr/bin/mkfs.erofs"); err != nil {
		t.Skip("skipping: mkfs.erofs missing (make deps)")
	}
	dir := t.TempDir()
	layer := filepath.Join(dir, "snapshots", "7", "fs")
	os.MkdirAll(layer, 0o755)
	os.WriteFile(filepath.Join(layer, "old"), []byte("old"), 0o644)
	c := &Converter{LayerCache: filepath.Join(dir, "cache")}
	before, err := c.layer(context.Background(), layer)
	if err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(dir, "snapshots"))
	os.MkdirAll(layer, 0o755)
	os.WriteFile(filepath.Join(layer, "new"), []byte("new"), 0o644)
	after, err := c.layer(context.Background(), layer)
	if err != nil {
		t.Fatal(err)
	}
	if after.Path == before.Path {
		t.Errorf("the remade directory %s got the old directory's image %s", layer, before.Path)
	}
}

// Prune removes the images nobody used for MaxAge and builds a dead shim
// left, and keeps the rest; a cache hit counts as a use.
func TestPruneRemovesOnlyLongUnusedImages(t *testing.T) {
	cache := t.TempDir()
	old := time.Now().Add(-48 * time.Hour)
	for name, mtime := range map[string]time.Time{
		"stale.erofs": old, "fresh.erofs": time.Now(), ".build-1.erofs": old, "notes.txt": old,
	} {
		p := filepath.Join(cache, name)
		os.WriteFile(p, []byte("x"), 0o600)
		os.Chtimes(p, mtime, mtime)
	}
	(&Converter{LayerCache: cache, MaxAge: 24 * time.Hour}).Prune(context.Background())
	var left []string
	entries, _ := os.ReadDir(cache)
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if strings.Join(left, " ") != "fresh.erofs notes.txt" {
		t.Errorf("left %v, want fresh.erofs and notes.txt", left)
	}
	(&Converter{LayerCache: cache}).Prune(context.Background()) // no MaxAge: keeps everything
	if entries, _ := os.ReadDir(cache); len(entries) != 2 {
		t.Errorf("Prune without MaxAge removed images")
	}
}

func TestUnsupportedMountsAreNamed(t *testing.T) {
	c := &Converter{LayerCache: t.TempDir(), UpperSizeMiB: 16}
	_, err := c.Convert(context.Background(), t.TempDir(), []*types.Mount{{Type: "nfs", Source: "server:/x"}, {Type: "xfs", Source: "/dev/sdz"}})
	if !errors.Is(err, errdefs.ErrNotImplemented) || !strings.Contains(err.Error(), `"nfs"`) {
		t.Errorf("got %v", err)
	}
	if _, err := c.Convert(context.Background(), t.TempDir(), nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("no mounts: %v", err)
	}
}
