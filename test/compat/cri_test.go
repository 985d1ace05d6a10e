package compat

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/qemu-shim/qemu-shim/test/crismoke"
	"github.com/qemu-shim/qemu-shim/test/ctrd"
)

// TestCrictlPodOnContainerd16: test/cri's pod smoke test (crictl runp with
// the qemu handler, two containers, exec, logs, stop and remove) through
// containerd 1.6's CRI plugin, which starts the shim as a task API v2
// runtime (runtime_type = "io.containerd.qemu.v1").
func TestCrictlPodOnContainerd16(t *testing.T) {
	if skip != "" {
		t.Skipf("skipping: %s", skip)
	}
	if _, err := os.Stat(crismoke.Crictl()); err != nil {
		t.Skipf("skipping: no crictl (%v): run 'make clients' (../shared/tools/build-clients.sh)", err)
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		t.Skip("skipping: no CNI plugins in /usr/lib/cni (make deps installs them)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	d, err := ctrd.StartWith(ctx, ctrd.Options{CRI: true, BinDir: ctrd.Containerd16Dir, ConfigVersion: 2})
	cancel()
	if err != nil {
		t.Fatalf("containerd 1.6 with CRI: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd 1.6 log (end):\n%s", d.LogTail(8000))
		}
		crismoke.RemoveAllPods(d)
		d.Close()
	})
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	// The same assertions as for 2.x: containerd 1.6 already puts the
	// pod's io.kubernetes.cri.sandbox-cpu-quota, -period and -memory
	// annotations on its sandbox (1.6.20 does; a VM of the configuration's
	// default 1 vCPU and 256 MiB would fail the size checks).
	crismoke.PodSmoke(ctx, t, d)
}
