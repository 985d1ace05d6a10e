package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/pkg/oci"
)

// loopDevice makes a 4 MiB image holding pattern at offset 0 and a loop
// device over it (mode 0640, group 6), removed at the end of the test.
func loopDevice(t *testing.T, pattern string) (dev, image string) {
	t.Helper()
	image = filepath.Join(t.TempDir(), "disk.img")
	b := make([]byte, 4<<20)
	copy(b, pattern)
	if err := os.WriteFile(image, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", image).CombinedOutput()
	if err != nil {
		t.Skipf("no loop device: losetup: %v: %s", err, out)
	}
	dev = strings.TrimSpace(string(out))
	st, err := os.Stat(dev)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	t.Cleanup(func() {
		os.Chmod(dev, st.Mode().Perm())
		os.Chown(dev, int(sys.Uid), int(sys.Gid))
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	// A mode and group of its own, which the container's node must have.
	if err := os.Chmod(dev, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dev, 0, 6); err != nil {
		t.Fatal(err)
	}
	return dev, image
}

// TestBlockDevices: host block devices in linux.devices reach the
// container as runc gives them: at the spec's path (the host's, as ctr
// --device and oci.WithLinuxDevice name it, or another, as nerdctl's
// HOST:CONTAINER and CRI do) with the host node's mode and owner; a
// device granted rwm is read and written, and the host sees the write
// once the container is gone; one granted only r is read but not written.
// The runc shim runs the same container. A host character device is
// refused by ours with an error naming it.
func TestBlockDevices(t *testing.T) {
	ctx := requireEnv(t)
	for _, runtime := range []string{runtimeName, "io.containerd.runc.v2"} {
		t.Run(runtime, func(t *testing.T) {
			rw, rwImage := loopDevice(t, "QEMU-SHIM-BLOCK-RW")
			ro, roImage := loopDevice(t, "QEMU-SHIM-BLOCK-RO")
			script := `head -c 18 ` + rw + `; echo
head -c 18 /dev/xvdc; echo
stat -c '%a %u %g %F' ` + rw + ` /dev/xvdc
printf WRITTEN-BY-THE-CONTAINER | dd of=` + rw + ` bs=512 seek=8 conv=notrunc,fsync 2>/dev/null || echo rw-refused
(printf X | dd of=/dev/xvdc bs=512 seek=8 conv=notrunc,fsync 2>/dev/null) && echo ro-written || echo ro-refused`
			id := "blockdev-" + short(runtime)
			c, err := newContainerOn(ctx, t, runtime, id, nil, false,
				oci.WithLinuxDevice(rw, "rwm"),
				oci.WithDevices(ro, "/dev/xvdc", "r"),
				oci.WithProcessArgs("sh", "-c", script))
			if err != nil {
				t.Fatal(err)
			}
			if err := c.task.Start(ctx); err != nil {
				t.Fatal(err)
			}
			status, out := c.finish(ctx)
			// The nodes have the host nodes' mode and owner.
			node := func(dev string) string {
				st, err := os.Stat(dev)
				if err != nil {
					t.Fatal(err)
				}
				sys := st.Sys().(*syscall.Stat_t)
				return fmt.Sprintf("%o %d %d block special file\n", st.Mode().Perm(), sys.Uid, sys.Gid)
			}
			want := "QEMU-SHIM-BLOCK-RW\nQEMU-SHIM-BLOCK-RO\n" + node(rw) + node(ro) + "ro-refused\n"
			if status != 0 || out != want {
				t.Errorf("exit %d, output:\n%s\nwant:\n%s", status, out, want)
			}
			for _, img := range []struct {
				path, want string
			}{{rwImage, "WRITTEN-BY-THE-CONTAINER"}, {roImage, ""}} {
				b, err := os.ReadFile(img.path)
				if err != nil {
					t.Fatal(err)
				}
				if got := string(bytes.TrimRight(b[4096:4096+24], "\x00")); got != img.want {
					t.Errorf("%s at 4096: %q, want %q", img.path, got, img.want)
				}
			}
		})
	}

	t.Run("character device refused", func(t *testing.T) {
		_, err := newContainer(ctx, t, "blockdev-chr", nil, false,
			oci.WithLinuxDevice("/dev/loop-control", "rwm"), oci.WithProcessArgs("true"))
		if err == nil || !strings.Contains(err.Error(), "/dev/loop-control") || !strings.Contains(err.Error(), "character device") {
			t.Errorf("create with /dev/loop-control: %v, want an error naming it", err)
		}
	})
	t.Run("pod", func(t *testing.T) { blockDevicePod(t) })
	if left := leftovers(); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

// blockDevicePod: in a pod's VM, a container's block device is detached
// when the container is deleted, and when its create fails, while the VM
// goes on: QEMU no longer holds the host device.
func blockDevicePod(t *testing.T) {
	ctx := requireEnv(t)
	dev, _ := loopDevice(t, "QEMU-SHIM-BLOCK-POD")
	group := oci.WithAnnotations(map[string]string{"io.kubernetes.cri.sandbox-id": "blockpod"})
	pause, err := newContainer(ctx, t, "blockpod-pause", nil, false, group, oci.WithProcessArgs("sleep", "1000"))
	if err != nil {
		t.Fatal(err)
	}
	if err := pause.task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	qemu := pidOf(t, "qemu-system.*"+vmDir("blockpod-pause")+"/")
	app, err := newContainer(ctx, t, "blockpod-app", nil, false, group, oci.WithLinuxDevice(dev, "rwm"), oci.WithProcessArgs("sleep", "1000"))
	if err != nil {
		t.Fatal(err)
	}
	if err := app.task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, out := app.exec(ctx, "read", "head", "-c", "19", dev); out != "QEMU-SHIM-BLOCK-POD" {
		t.Errorf("read the device in the pod: %q", out)
	}
	if n := holds(qemu, dev); n == 0 {
		t.Errorf("QEMU does not hold %s while a container uses it", dev)
	}
	app.task.Kill(ctx, syscall.SIGKILL)
	app.finish(ctx)
	if n := holds(qemu, dev); n != 0 {
		t.Errorf("QEMU holds %s %d times after its container was deleted", dev, n)
	}
	// A create that fails in the guest (no such executable) gives it back.
	if _, err := newContainer(ctx, t, "blockpod-bad", nil, false, group, oci.WithLinuxDevice(dev, "rwm"), oci.WithProcessArgs("/nonexistent")); err == nil {
		t.Error("create with a missing executable succeeded")
	}
	if n := holds(qemu, dev); n != 0 {
		t.Errorf("QEMU holds %s %d times after a failed create", dev, n)
	}
	if _, out := pause.exec(ctx, "alive", "echo", "alive"); out != "alive\n" {
		t.Errorf("the pod's VM after its containers: %q", out)
	}
	pause.task.Kill(ctx, syscall.SIGKILL)
	pause.finish(ctx)
}

// holds counts the descriptors of process pid open on path.
func holds(pid int, path string) int {
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	n := 0
	for _, fd := range fds {
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && target == path {
			n++
		}
	}
	return n
}
