// Package crismoke is the crictl smoke test of a pod under the qemu
// handler, shared by the CRI tests of containerd 2.x (test/cri) and 1.6
// (test/compat).
package crismoke

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/qemu-shim/qemu-shim/internal/busybox"
	"github.com/qemu-shim/qemu-shim/test/ctrd"
	"github.com/qemu-shim/qemu-shim/vm"
)

// ClientsDir holds crictl and critest ('make clients', from
// ../shared/tools/build-clients.sh).
func ClientsDir() string { return filepath.Join(ctrd.RepoDir(), "build", "clients") }

// Crictl is crictl's path.
func Crictl() string { return filepath.Join(ClientsDir(), "crictl") }

// Run runs crictl against d and returns its standard output, failing the
// test with both outputs if it fails.
func Run(ctx context.Context, t *testing.T, d *ctrd.Daemon, args ...string) string {
	t.Helper()
	ep := "unix://" + d.Socket
	cmd := exec.CommandContext(ctx, Crictl(), append([]string{"--runtime-endpoint", ep, "--image-endpoint", ep, "--timeout", "3m"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("crictl %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// RemoveAllPods force-removes every pod of d: pods a failed test left
// would keep their shims (and VMs) running after containerd stops, as
// shims do.
func RemoveAllPods(d *ctrd.Daemon) {
	exec.Command(Crictl(), "--runtime-endpoint", "unix://"+d.Socket, "rmp", "--all", "--force").Run()
}

// WriteJSON writes v to a file in the test's temporary directory.
func WriteJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// PodSmoke: a pod of two containers under the qemu handler runs in one VM
// sized for the pod's resources (from its sandbox's
// io.kubernetes.cri.sandbox-cpu-quota, -period and -memory annotations),
// with a kernel other than the host's, and its containers exec, log, stop
// and go, leaving nothing behind.
func PodSmoke(ctx context.Context, t *testing.T, d *ctrd.Daemon) {
	crictl := func(args ...string) string {
		t.Helper()
		return Run(ctx, t, d, args...)
	}
	logDir := t.TempDir()
	pod := WriteJSON(t, map[string]any{
		"metadata":      map[string]any{"name": "qs-pod", "namespace": "default", "uid": "qs-pod-uid", "attempt": 1},
		"hostname":      "qs-pod-host",
		"log_directory": logDir,
		// The pod's resources: its VM is sized for them from the start.
		"linux": map[string]any{"resources": map[string]any{"cpu_period": 100000, "cpu_quota": 200000, "memory_limit_in_bytes": 512 << 20}},
	})
	podID := strings.TrimSpace(crictl("runp", "--runtime", "qemu", pod))
	t.Cleanup(func() {
		ctx := context.WithoutCancel(ctx)
		exec.CommandContext(ctx, Crictl(), "--runtime-endpoint", "unix://"+d.Socket, "stopp", podID).Run()
		exec.CommandContext(ctx, Crictl(), "--runtime-endpoint", "unix://"+d.Socket, "rmp", "-f", podID).Run()
	})
	var ids []string
	for _, name := range []string{"first", "second"} {
		c := WriteJSON(t, map[string]any{
			"metadata": map[string]any{"name": name},
			"image":    map[string]any{"image": busybox.DefaultRef},
			"command":  []string{"sh", "-c", "echo " + name + " says hello; exec sleep 1000"},
			"log_path": name + ".log",
			"linux":    map[string]any{},
		})
		id := strings.TrimSpace(crictl("create", podID, c, pod))
		crictl("start", id)
		ids = append(ids, id)
	}
	bootIDs := map[string]bool{}
	host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	for _, id := range ids {
		bootIDs[crictl("exec", id, "cat", "/proc/sys/kernel/random/boot_id")] = true
		if kernel := crictl("exec", id, "uname", "-r"); kernel == string(host) {
			t.Errorf("container %s runs the host's kernel %s", id, kernel)
		}
		if h := crictl("exec", id, "hostname"); h != "qs-pod-host\n" {
			t.Errorf("hostname %q, want the pod's", h)
		}
	}
	if len(bootIDs) != 1 {
		t.Errorf("the pod's containers see %d boot ids, want one VM", len(bootIDs))
	}
	if n := crictl("exec", ids[0], "nproc"); n != "2\n" {
		t.Errorf("the pod's VM has %q vCPUs, want the pod's 2", n)
	}
	var memKiB int
	fmt.Sscanf(crictl("exec", ids[0], "awk", "/MemTotal/ {print $2}", "/proc/meminfo"), "%d", &memKiB)
	if memKiB < 600<<10 {
		t.Errorf("the pod's VM has %d KiB of memory: want room for the pod's 512 MiB beside the guest's own", memKiB)
	}
	if b, _ := exec.Command("pgrep", "-fc", "qemu-system.*"+d.VMStateRoot()).Output(); strings.TrimSpace(string(b)) != "1" {
		t.Errorf("%s QEMU processes for the pod, want 1", strings.TrimSpace(string(b)))
	}
	if out := crictl("logs", ids[1]); out != "second says hello\n" {
		t.Errorf("logs: %q", out)
	}
	// In-place resize (UpdateContainerResources): the container's cgroup
	// in the guest takes the new limits, and the VM grows for them: three
	// vCPUs for a quota of three, on top of the pod's own two.
	crictl("update", "--cpu-period", "100000", "--cpu-quota", "300000", "--memory", strconv.Itoa(768<<20), ids[0])
	if out := crictl("exec", ids[0], "cat", "/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/memory.max"); out != "300000 100000\n"+strconv.Itoa(768<<20)+"\n" {
		t.Errorf("after update, the container's cgroup says %q", out)
	}
	if n := crictl("exec", ids[0], "nproc"); n != "3\n" {
		t.Errorf("after update to 3 CPUs, the VM has %q vCPUs", n)
	}
	for _, id := range ids {
		crictl("stop", "--timeout", "2", id)
		crictl("rm", id)
	}
	crictl("stopp", podID)
	crictl("rmp", podID)
	if b, err := exec.Command("pgrep", "-af", "qemu-system.*"+d.VMStateRoot()+"|virtiofsd.*"+d.VMStateRoot()).Output(); err == nil && len(bytes.TrimSpace(b)) > 0 {
		t.Errorf("left running: %s", b)
	}
	entries, _ := os.ReadDir(d.VMStateRoot())
	entries = slices.DeleteFunc(entries, func(e os.DirEntry) bool { return vm.StateRootEntry(e.Name()) })
	if len(entries) > 0 {
		t.Errorf("VM state left: %v", entries)
	}
}
