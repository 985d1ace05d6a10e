package cri

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qemu-shim/qemu-shim/internal/busybox"
	"github.com/qemu-shim/qemu-shim/test/ctrd"
)

var env struct {
	*ctrd.Daemon
	clients string // build/clients
	skip    string
}

func TestMain(m *testing.M) {
	env.clients = filepath.Join(ctrd.RepoDir(), "build", "clients")
	if _, err := os.Stat(filepath.Join(env.clients, "crictl")); err != nil {
		if _, serr := os.Stat(filepath.Join(ctrd.RepoDir(), "..", "shared", "tools", "build-clients.sh")); serr != nil {
			env.skip = "no crictl, and no ../shared/tools/build-clients.sh to build it"
			os.Exit(m.Run())
		}
		fmt.Fprintf(os.Stderr, "cri: crictl is missing (%v): run 'make clients'\n", err)
		os.Exit(1)
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		env.skip = "no CNI plugins in /usr/lib/cni (make deps installs them)"
		os.Exit(m.Run())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	d, err := ctrd.StartWith(ctx, ctrd.Options{CRI: true})
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "cri setup: %v\n", err)
		if os.Getenv("QEMU_SHIM_INTEGRATION") == "1" {
			os.Exit(1)
		}
		env.skip = err.Error()
		os.Exit(m.Run())
	}
	env.Daemon = d
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "containerd log (end):\n%s\n", d.LogTail(8000))
	}
	// Pods a failed spec left would keep their shims (and VMs) running
	// after containerd stops, as shims do.
	ep := "unix://" + d.Socket
	exec.Command(filepath.Join(env.clients, "crictl"), "--runtime-endpoint", ep, "rmp", "--all", "--force").Run()
	d.Close()
	os.Exit(code)
}

func requireEnv(t *testing.T) context.Context {
	t.Helper()
	if env.skip != "" {
		t.Skipf("skipping: %s", env.skip)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// crictl runs crictl against the daemon and returns its standard output,
// failing the test with both outputs if it fails.
func crictl(ctx context.Context, t *testing.T, args ...string) string {
	t.Helper()
	ep := "unix://" + env.Socket
	cmd := exec.CommandContext(ctx, filepath.Join(env.clients, "crictl"), append([]string{"--runtime-endpoint", ep, "--image-endpoint", ep, "--timeout", "3m"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("crictl %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

func writeJSON(t *testing.T, v any) string {
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

// TestCrictlPod: a pod of two containers under the qemu handler runs in
// one VM with a kernel other than the host's, and its containers exec,
// log, stop and go, leaving nothing behind.
func TestCrictlPod(t *testing.T) {
	ctx := requireEnv(t)
	logDir := t.TempDir()
	pod := writeJSON(t, map[string]any{
		"metadata":      map[string]any{"name": "qs-pod", "namespace": "default", "uid": "qs-pod-uid", "attempt": 1},
		"hostname":      "qs-pod-host",
		"log_directory": logDir,
		// The pod's resources: its VM is sized for them from the start.
		"linux": map[string]any{"resources": map[string]any{"cpu_period": 100000, "cpu_quota": 200000, "memory_limit_in_bytes": 512 << 20}},
	})
	podID := strings.TrimSpace(crictl(ctx, t, "runp", "--runtime", "qemu", pod))
	t.Cleanup(func() {
		ctx := context.WithoutCancel(ctx)
		exec.CommandContext(ctx, filepath.Join(env.clients, "crictl"), "--runtime-endpoint", "unix://"+env.Socket, "stopp", podID).Run()
		exec.CommandContext(ctx, filepath.Join(env.clients, "crictl"), "--runtime-endpoint", "unix://"+env.Socket, "rmp", "-f", podID).Run()
	})
	var ids []string
	for _, name := range []string{"first", "second"} {
		c := writeJSON(t, map[string]any{
			"metadata": map[string]any{"name": name},
			"image":    map[string]any{"image": busybox.DefaultRef},
			"command":  []string{"sh", "-c", "echo " + name + " says hello; exec sleep 1000"},
			"log_path": name + ".log",
			"linux":    map[string]any{},
		})
		id := strings.TrimSpace(crictl(ctx, t, "create", podID, c, pod))
		crictl(ctx, t, "start", id)
		ids = append(ids, id)
	}
	bootIDs := map[string]bool{}
	host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	for _, id := range ids {
		bootIDs[crictl(ctx, t, "exec", id, "cat", "/proc/sys/kernel/random/boot_id")] = true
		if kernel := crictl(ctx, t, "exec", id, "uname", "-r"); kernel == string(host) {
			t.Errorf("container %s runs the host's kernel %s", id, kernel)
		}
		if h := crictl(ctx, t, "exec", id, "hostname"); h != "qs-pod-host\n" {
			t.Errorf("hostname %q, want the pod's", h)
		}
	}
	if len(bootIDs) != 1 {
		t.Errorf("the pod's containers see %d boot ids, want one VM", len(bootIDs))
	}
	if n := crictl(ctx, t, "exec", ids[0], "nproc"); n != "2\n" {
		t.Errorf("the pod's VM has %q vCPUs, want the pod's 2", n)
	}
	var memKiB int
	fmt.Sscanf(crictl(ctx, t, "exec", ids[0], "awk", "/MemTotal/ {print $2}", "/proc/meminfo"), "%d", &memKiB)
	if memKiB < 600<<10 {
		t.Errorf("the pod's VM has %d KiB of memory: want room for the pod's 512 MiB beside the guest's own", memKiB)
	}
	if b, _ := exec.Command("pgrep", "-fc", "qemu-system.*"+env.VMStateRoot()).Output(); strings.TrimSpace(string(b)) != "1" {
		t.Errorf("%s QEMU processes for the pod, want 1", strings.TrimSpace(string(b)))
	}
	if out := crictl(ctx, t, "logs", ids[1]); out != "second says hello\n" {
		t.Errorf("logs: %q", out)
	}
	// In-place resize (UpdateContainerResources): the container's cgroup
	// in the guest takes the new limits, and the VM grows for them: three
	// vCPUs for a quota of three, on top of the pod's own two.
	crictl(ctx, t, "update", "--cpu-period", "100000", "--cpu-quota", "300000", "--memory", strconv.Itoa(768<<20), ids[0])
	if out := crictl(ctx, t, "exec", ids[0], "cat", "/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/memory.max"); out != "300000 100000\n"+strconv.Itoa(768<<20)+"\n" {
		t.Errorf("after update, the container's cgroup says %q", out)
	}
	if n := crictl(ctx, t, "exec", ids[0], "nproc"); n != "3\n" {
		t.Errorf("after update to 3 CPUs, the VM has %q vCPUs", n)
	}
	for _, id := range ids {
		crictl(ctx, t, "stop", "--timeout", "2", id)
		crictl(ctx, t, "rm", id)
	}
	crictl(ctx, t, "stopp", podID)
	crictl(ctx, t, "rmp", podID)
	if b, err := exec.Command("pgrep", "-af", "qemu-system.*"+env.VMStateRoot()+"|virtiofsd.*"+env.VMStateRoot()).Output(); err == nil && len(bytes.TrimSpace(b)) > 0 {
		t.Errorf("left running: %s", b)
	}
	if entries, _ := os.ReadDir(env.VMStateRoot()); len(entries) > 0 {
		t.Errorf("VM state left: %v", entries)
	}
}
