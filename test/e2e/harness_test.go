package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/qemu-shim/qemu-shim/test/ctrd"
	"github.com/qemu-shim/qemu-shim/vm"
)

const runtimeName = ctrd.Runtime

// env is the private containerd every test shares.
var env struct {
	*ctrd.Daemon
	client *containerd.Client
	image  containerd.Image
	work   string
	run    string
	skip   string
}

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	d, err := ctrd.Start(ctx)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e setup: %v\n", err)
		if os.Getenv("QEMU_SHIM_INTEGRATION") == "1" {
			os.Exit(1)
		}
		env.skip = err.Error()
		os.Exit(m.Run())
	}
	env.Daemon, env.client, env.image, env.work, env.run = d, d.Client, d.Image, d.Work, d.Run
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "containerd log (end):\n%s\n", d.LogTail(8000))
		if kept, err := d.KeepLog("qemu-shim-e2e-containerd.log"); err == nil {
			fmt.Fprintf(os.Stderr, "containerd's whole log: %s\n", kept)
		}
	}
	d.Close()
	os.Exit(code)
}

func requireEnv(t *testing.T) context.Context {
	t.Helper()
	if env.skip != "" {
		t.Skipf("skipping: %s", env.skip)
	}
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), ctrd.Namespace), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// ctrCommand runs the ctr binary against the private containerd.
func ctrCommand(ctx context.Context, args ...string) *exec.Cmd { return env.Ctr(ctx, args...) }

// started is when the tests began.
var started = time.Now()

// leftovers lists what a deleted container must not leave: QEMU processes
// of this run, VM state directories, mounts of the run's directories,
// shim sockets made during the run.
func leftovers() []string {
	var out []string
	for _, path := range ctrd.LeakedShimSockets(started) {
		out = append(out, "shim socket: "+path)
	}
	if b, err := exec.Command("pgrep", "-af", "qemu-system.*"+env.run).Output(); err == nil && len(bytes.TrimSpace(b)) > 0 {
		out = append(out, "processes: "+string(b))
	}
	// Taps belong in the containers' namespaces, never in the host's.
	if links, err := os.ReadDir("/sys/class/net"); err == nil {
		for _, l := range links {
			// (qstap<N>: the shim's; the integration tests make their own.)
			if n, ok := strings.CutPrefix(l.Name(), "qstap"); ok && n != "" && strings.Trim(n, "0123456789") == "" {
				out = append(out, "tap in the host namespace: "+l.Name())
			}
		}
	}
	if entries, err := os.ReadDir(env.VMStateRoot()); err == nil {
		for _, e := range entries {
			if !vm.StateRootEntry(e.Name()) {
				out = append(out, "state directory: "+e.Name())
			}
		}
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, env.work) || strings.Contains(line, env.VMStateRoot()) {
				out = append(out, "mount: "+line)
			}
		}
	}
	return out
}

// short names a runtime in container IDs: "q" for ours, "r" for runc's.
func short(runtime string) string {
	if runtime == runtimeName {
		return "q"
	}
	return "r"
}
