package cri

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qemu-shim/qemu-shim/test/crismoke"
	"github.com/qemu-shim/qemu-shim/test/ctrd"
)

var env struct {
	*ctrd.Daemon
	clients string // build/clients
	skip    string
}

func TestMain(m *testing.M) {
	env.clients = crismoke.ClientsDir()
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
		if kept, err := d.KeepLog("qemu-shim-cri-containerd.log"); err == nil {
			fmt.Fprintf(os.Stderr, "containerd's whole log: %s\n", kept)
		}
	}
	crismoke.RemoveAllPods(d)
	// Not a failure yet: a run of 2026-12-03 left two idle qemu shims (no
	// VM, never shut down) and its log was not kept; this keeps the next.
	if left := d.LeftShims(30 * time.Second); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "cri: shims still running once every pod was removed:\n%s\n", strings.Join(left, "\n"))
		if kept, err := d.KeepLog("qemu-shim-cri-leftshims.log"); err == nil {
			fmt.Fprintf(os.Stderr, "containerd's whole log: %s\n", kept)
		}
		exec.Command("pkill", "-f", d.ShimPattern()).Run()
	}
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

// TestCrictlPod: a pod of two containers under the qemu handler runs in
// one VM with a kernel other than the host's, and its containers exec,
// log, stop and go, leaving nothing behind (crismoke.PodSmoke).
func TestCrictlPod(t *testing.T) {
	ctx := requireEnv(t)
	crismoke.PodSmoke(ctx, t, env.Daemon)
}
