package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"

	"github.com/qemu-shim/qemu-shim/test/ctrd"
	"github.com/qemu-shim/qemu-shim/vm"
)

// TestErofsSnapshotter runs busybox from containerd's erofs snapshotter
// (the one nerdbox uses: the layers' erofs blobs and a format/mkdir/overlay
// mount templated over them) through ctr, writing to the rootfs, with ours
// and with runc's shim (for which containerd's mount manager mounts the
// layers on the host): in its default directory mode, and in its block
// mode (the writable layer an ext4 image, mkfs/ext4) in a containerd of its
// own. The shim attaches the snapshotter's blobs as they are: it converts
// no layer.
func TestErofsSnapshotter(t *testing.T) {
	ctx := requireEnv(t)
	if b, _ := os.ReadFile("/proc/filesystems"); !strings.Contains(string(b), "\terofs\n") {
		exec.Command("modprobe", "erofs").Run()
		if b, _ := os.ReadFile("/proc/filesystems"); !strings.Contains(string(b), "\terofs\n") {
			t.Skip("skipping: no erofs in the host kernel (the erofs snapshotter needs it)")
		}
	}
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Skip("skipping: mkfs.erofs missing (erofs-utils)")
	}
	t.Run("directory mode", func(t *testing.T) {
		runErofs(ctx, t, env.Daemon, env.image, []string{runtimeName, "io.containerd.runc.v2"})
		// Layers above busybox: lowerdir={{ overlay 0 3 }}, topmost first.
		ref := "qemu-shim.dev/erofs-layers:4"
		img, err := env.ImportBusybox(ctx, ref, 3)
		if err != nil {
			t.Fatal(err)
		}
		defer env.Client.ImageService().Delete(context.WithoutCancel(ctx), ref)
		runErofs(ctx, t, env.Daemon, img, []string{runtimeName, "io.containerd.runc.v2"})
		if left := leftovers(); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})
	t.Run("block mode", func(t *testing.T) {
		d, err := ctrd.StartWith(ctx, ctrd.Options{ErofsDefaultSize: "64M"})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		defer func() {
			if t.Failed() {
				t.Logf("containerd log (end):\n%s", d.LogTail(6000))
			}
		}()
		runErofs(ctx, t, d, d.Image, []string{runtimeName, "io.containerd.runc.v2"})
		// The writable layer is the snapshot's image: what the container
		// wrote is in its upper/, for containerd to diff or commit.
		out, err := d.Ctr(ctx, "run", "--snapshotter", "erofs", "--runtime", runtimeName, d.Image.Name(), "erofs-kept", "sh", "-c", "echo kept > /kept").CombinedOutput()
		if err != nil {
			t.Fatalf("run: %v: %s", err, out)
		}
		// (The unpack's first layer leaves an image of its own.)
		images, _ := filepath.Glob(filepath.Join(d.Work, "root", "io.containerd.snapshotter.v1.erofs", "snapshots", "*", "rwlayer.img"))
		var holding []string
		for _, img := range images {
			if got, err := exec.CommandContext(ctx, "debugfs", "-R", "cat /upper/kept", img).Output(); err == nil && string(got) == "kept\n" {
				holding = append(holding, img)
			}
		}
		if len(holding) != 1 {
			t.Errorf("writable images holding the container's /upper/kept: %v of %v, want one", holding, images)
		}
		if out, err := d.Ctr(ctx, "container", "rm", "erofs-kept").CombinedOutput(); err != nil {
			t.Errorf("container rm: %v: %s", err, out)
		}
		if left := leftoversOf(d); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})
}

// runErofs runs a container that writes to its rootfs with each runtime,
// from img (busybox under ctrd.ImportBusybox's extra layers) unpacked into
// the erofs snapshotter.
func runErofs(ctx context.Context, t *testing.T, d *ctrd.Daemon, img containerd.Image, runtimes []string) {
	t.Helper()
	if err := img.Unpack(ctx, "erofs"); err != nil {
		t.Fatalf("unpack for erofs: %v", err)
	}
	layers, err := img.RootFS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	extra := len(layers) - 1
	for _, runtime := range runtimes {
		for _, img := range cachedLayers(d) {
			os.Remove(img)
		}
		id := "erofs-" + short(runtime)
		// Each extra layer's file (see busybox.LayerFile), the top one's
		// last; the writable layer's upper/ and work/ out of sight.
		script := "echo hello > /new && cat /new && head -1 /etc/passwd && cat /layers/* 2>/dev/null; ! ls /upper /work 2>/dev/null"
		var stderr strings.Builder
		cmd := d.Ctr(ctx, "run", "--rm", "--snapshotter", "erofs", "--runtime", runtime, img.Name(), id, "sh", "-c", script)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		want := "hello\nroot:x:0:0:root:/root:/bin/sh\n"
		for i := 1; i <= extra; i++ {
			want += strconv.Itoa(i) + "\n"
		}
		if err != nil || string(out) != want {
			t.Errorf("%s: %v: output %q, want %q; stderr: %s", runtime, err, out, want, stderr.String())
		}
		if runtime == runtimeName {
			if imgs := cachedLayers(d); len(imgs) > 0 {
				t.Errorf("the shim converted layers (the snapshotter's blobs were mounted on the host?): %v", imgs)
			}
		}
	}
}

func cachedLayers(d *ctrd.Daemon) []string {
	imgs, _ := filepath.Glob(filepath.Join(d.LayerCache(), "*.erofs"))
	return imgs
}

// leftoversOf is leftovers for a containerd of a test's own: QEMU
// processes, VM state directories and mounts below its directories.
func leftoversOf(d *ctrd.Daemon) []string {
	var out []string
	if b, err := exec.Command("pgrep", "-af", "qemu-system.*"+d.Run).Output(); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		out = append(out, "processes: "+string(b))
	}
	if entries, err := os.ReadDir(d.VMStateRoot()); err == nil {
		for _, e := range entries {
			if !vm.StateRootEntry(e.Name()) {
				out = append(out, "state directory: "+e.Name())
			}
		}
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, d.Work) || strings.Contains(line, d.VMStateRoot()) {
				out = append(out, "mount: "+line)
			}
		}
	}
	return out
}
