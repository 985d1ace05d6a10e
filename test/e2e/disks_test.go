package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/qemu-shim/qemu-shim/shim/bundle"
	"github.com/qemu-shim/qemu-shim/test/ctrd"
)

const diskFileContent = "QEMU-SHIM-DISK-API"

// diskImage makes an ext4 image holding hello.txt in dir.
func diskImage(t *testing.T, dir, name string) string {
	t.Helper()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "hello.txt"), []byte(diskFileContent), 0o644); err != nil {
		t.Fatal(err)
	}
	image := filepath.Join(dir, name)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", src, image, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	t.Cleanup(func() { os.Remove(image) })
	return image
}

// diskCLI runs 'qemu-shim disk ARGS' against the test's shims.
func diskCLI(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"disk", args[0], "--state-root", env.VMStateRoot(), "--namespace", ctrd.Namespace}, args[1:]...)
	out, err := exec.CommandContext(ctx, filepath.Join(env.Repo, "bin", "qemu-shim"), full...).CombinedOutput()
	return string(out), err
}

// queryBlock is what the VM's QEMU has for disks (query-block through
// 'qemu-shim inspect').
func queryBlock(ctx context.Context, t *testing.T, vm string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, filepath.Join(env.Repo, "bin", "qemu-shim"), "inspect", "--state-root", env.VMStateRoot(), vm).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-shim inspect: %v: %s", err, out)
	}
	return string(out)
}

// TestOperatorDisks: an operator attaches a disk image to a running
// container and mounts it there, the container reads its file, a detach
// without --force is refused while it is mounted, with --force the file is
// gone from the container and the disk from QEMU. Refusals name their
// reason. A pod's later container is found too.
func TestOperatorDisks(t *testing.T) {
	ctx := requireEnv(t)
	c := mustContainer(ctx, t, "opdisk", "sleep", "1000")
	vmName := bundle.VMName(ctrd.Namespace, "opdisk")
	image := diskImage(t, env.DiskRoot(), "data.img")

	outside := diskImage(t, t.TempDir(), "outside.img")
	if out, err := diskCLI(ctx, "attach", "opdisk", outside); err == nil || !strings.Contains(out, "not below operator.disk_roots") {
		t.Errorf("attach of an image outside the disk roots: %v: %s", err, out)
	}
	if out, err := diskCLI(ctx, "attach", "nosuch", image); err == nil || !strings.Contains(out, "no running VM") {
		t.Errorf("attach to a container that does not exist: %v: %s", err, out)
	}

	out, err := diskCLI(ctx, "attach", "opdisk", image, "--mount", "/mnt/data")
	if err != nil {
		t.Fatalf("attach: %v: %s", err, out)
	}
	serial := strings.TrimSpace(out)
	if !strings.Contains(queryBlock(ctx, t, vmName), image) {
		t.Errorf("QEMU has no block node for %s after attach", image)
	}
	if _, out := c.exec(ctx, "read", "cat", "/mnt/data/hello.txt"); out != diskFileContent {
		t.Errorf("container reads %q from the attached disk, want %q", out, diskFileContent)
	}
	if out, err := diskCLI(ctx, "attach", "opdisk", image); err == nil || !strings.Contains(out, "attached already") {
		t.Errorf("second attach of one image: %v: %s", err, out)
	}
	if out, err := diskCLI(ctx, "ls", "opdisk"); err != nil || !strings.Contains(out, serial) || !strings.Contains(out, "/mnt/data") {
		t.Errorf("ls: %v: %s", err, out)
	}
	if out, err := diskCLI(ctx, "detach", "opdisk", serial); err == nil || !strings.Contains(out, "mounted in container opdisk") || !strings.Contains(out, "--force") {
		t.Errorf("detach of a mounted disk without --force: %v: %s", err, out)
	}
	if out, err := diskCLI(ctx, "detach", "opdisk", "o999", "--force"); err == nil || !strings.Contains(out, "no disk o999") {
		t.Errorf("detach of a disk that does not exist: %v: %s", err, out)
	}
	if out, err := diskCLI(ctx, "detach", "opdisk", serial, "--force"); err != nil {
		t.Fatalf("detach --force: %v: %s", err, out)
	}
	if status, out := c.exec(ctx, "gone", "cat", "/mnt/data/hello.txt"); status == 0 {
		t.Errorf("the container still reads %q after detach", out)
	}
	if qb := queryBlock(ctx, t, vmName); strings.Contains(qb, image) || strings.Contains(qb, "drv-"+serial) {
		t.Errorf("QEMU still has the disk after detach: %s", qb)
	}
	if out, err := diskCLI(ctx, "ls", "opdisk"); err != nil || strings.Contains(out, serial) {
		t.Errorf("ls after detach: %v: %s", err, out)
	}

	// Attached without a mount: a block device in the guest, detached
	// without --force, and one left attached goes with its container.
	out, err = diskCLI(ctx, "attach", "opdisk", image, "--read-only")
	if err != nil {
		t.Fatalf("attach --read-only: %v: %s", err, out)
	}
	serial = strings.TrimSpace(out)
	if out, err := diskCLI(ctx, "detach", "opdisk", serial); err != nil {
		t.Errorf("detach of an unmounted disk: %v: %s", err, out)
	}
	if out, err := diskCLI(ctx, "attach", "opdisk", image, "--mount", "/mnt/again"); err != nil {
		t.Fatalf("attach again: %v: %s", err, out)
	}
	c.task.Kill(ctx, syscall.SIGKILL)
	c.finish(ctx)
}

// TestOperatorDisksPod: a pod's later container, whose VM is named after
// the first, is found by asking the shims.
func TestOperatorDisksPod(t *testing.T) {
	ctx := requireEnv(t)
	group := oci.WithAnnotations(map[string]string{"io.kubernetes.cri.sandbox-id": "opdiskpod"})
	start := func(id string) *ctr {
		c, err := newContainer(ctx, t, id, nil, false, group, oci.WithProcessArgs("sleep", "1000"))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.task.Start(ctx); err != nil {
			t.Fatal(err)
		}
		return c
	}
	first, app := start("opdiskpod-pause"), start("opdiskpod-app")
	image := diskImage(t, env.DiskRoot(), "pod.img")
	out, err := diskCLI(ctx, "attach", "opdiskpod-app", image, "--mount", "/data", "--read-only")
	if err != nil {
		t.Fatalf("attach to a pod's second container: %v: %s", err, out)
	}
	serial := strings.TrimSpace(out)
	if _, out := app.exec(ctx, "read", "cat", "/data/hello.txt"); out != diskFileContent {
		t.Errorf("app reads %q, want %q", out, diskFileContent)
	}
	if status, _ := first.exec(ctx, "other", "cat", "/data/hello.txt"); status == 0 {
		t.Errorf("the pod's other container sees the app's disk")
	}
	// Deleting the container detaches its disks.
	app.task.Kill(ctx, syscall.SIGKILL)
	app.finish(ctx)
	if qb := queryBlock(ctx, t, bundle.VMName(ctrd.Namespace, "opdiskpod-pause")); strings.Contains(qb, image) || strings.Contains(qb, "drv-"+serial) {
		t.Errorf("QEMU still has the disk after its container was deleted: %s", qb)
	}
	first.task.Kill(ctx, syscall.SIGKILL)
	first.finish(ctx)
}
