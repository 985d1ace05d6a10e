// Package compat runs the shim under containerd 1.6 (Debian 12's, unpacked
// by 'make containerd16' into build/), which starts shims without the
// bootstrap protocol and speaks task API v2: a private containerd 1.6 with
// its own root, state and socket, driven by its own ctr, and one with its
// CRI plugin, driven by crictl.
package compat

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qemu-shim/qemu-shim/internal/busybox"
	"github.com/qemu-shim/qemu-shim/shim/bundle"
	"github.com/qemu-shim/qemu-shim/test/ctrd"
	"github.com/qemu-shim/qemu-shim/vm"
)

var (
	daemon  *ctrd.Daemon
	skip    string
	started = time.Now()
)

func TestMain(m *testing.M) {
	bin := filepath.Join(ctrd.RepoDir(), ctrd.Containerd16Dir, "containerd")
	if _, err := os.Stat(bin); err != nil {
		skip = fmt.Sprintf("containerd 1.6 is not unpacked (%v): run 'make containerd16'", err)
		os.Exit(m.Run())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	d, err := ctrd.StartWith(ctx, ctrd.Options{BinDir: ctrd.Containerd16Dir, ConfigVersion: 2})
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "compat setup: %v\n", err)
		if os.Getenv("QEMU_SHIM_INTEGRATION") == "1" {
			os.Exit(1)
		}
		skip = err.Error()
		os.Exit(m.Run())
	}
	daemon = d
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "containerd 1.6 log (end):\n%s\n", d.LogTail(8000))
	}
	d.Close()
	os.Exit(code)
}

func requireDaemon(t *testing.T) context.Context {
	t.Helper()
	if skip != "" {
		t.Skipf("skipping: %s", skip)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// run runs containerd 1.6's ctr and returns its exit code and output.
func run(ctx context.Context, t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	cmd := daemon.Ctr(ctx, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String()
	case errors.As(err, &exit) && ctx.Err() == nil:
		return exit.ExitCode(), out.String()
	}
	t.Fatalf("ctr %v: %v: %s", args, err, out.String())
	return 0, ""
}

// TestCtrRunOnContainerd16: ctr run --rm through containerd 1.6 gives the
// container's output and exit code, and leaves no QEMU, shim or state.
func TestCtrRunOnContainerd16(t *testing.T) {
	ctx := requireDaemon(t)
	t0 := time.Now()
	code, out := run(ctx, t, "run", "--rm", "--runtime", ctrd.Runtime, busybox.DefaultRef, "c16-echo", "echo", "hello")
	if code != 0 || out != "hello\n" {
		t.Errorf("ctr run echo hello: exit %d, output %q", code, out)
	}
	t.Logf("ctr run --rm echo hello: %v", time.Since(t0).Round(time.Millisecond))
	waitNothingLeft(ctx, t, "c16-echo")

	t0 = time.Now()
	code, out = run(ctx, t, "run", "--rm", "--runtime", ctrd.Runtime, busybox.DefaultRef, "c16-exit3", "sh", "-c", "exit 3")
	if code != 3 {
		t.Errorf("ctr run sh -c 'exit 3': exit %d, want 3 (output %q)", code, out)
	}
	t.Logf("ctr run --rm sh -c 'exit 3': %v", time.Since(t0).Round(time.Millisecond))
	waitNothingLeft(ctx, t, "c16-exit3")
	if code, out := run(ctx, t, "containers", "ls", "-q"); code != 0 || strings.TrimSpace(out) != "" {
		t.Errorf("containers left: exit %d, %q", code, out)
	}
}

// TestDeadShimCleanedUpByContainerd16: when the shim dies, containerd 1.6
// runs the binary's delete action, which ends the VM's QEMU and removes
// its state directory.
func TestDeadShimCleanedUpByContainerd16(t *testing.T) {
	ctx := requireDaemon(t)
	id := "c16-crash"
	if code, out := run(ctx, t, "run", "-d", "--runtime", ctrd.Runtime, busybox.DefaultRef, id, "sleep", "1000"); code != 0 {
		t.Fatalf("ctr run -d: exit %d: %s", code, out)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		daemon.Ctr(ctx, "task", "kill", "-s", "KILL", id).Run()
		daemon.Ctr(ctx, "task", "delete", id).Run()
		daemon.Ctr(ctx, "containers", "delete", id).Run()
	})
	shim := pids(shimPattern(id))
	if len(shim) != 1 {
		t.Fatalf("shim processes for %s: %v", id, shim)
	}
	if err := syscall.Kill(shim[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// containerd 1.6 notices the shim's connection close, runs delete
	// and reports the task stopped.
	for {
		code, out := run(ctx, t, "task", "ls")
		if code == 0 && !strings.Contains(out, "RUNNING") {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("containerd 1.6 still lists the task of the dead shim: %s", out)
		case <-time.After(100 * time.Millisecond):
		}
	}
	run(ctx, t, "task", "delete", id)
	if code, out := run(ctx, t, "containers", "delete", id); code != 0 {
		t.Errorf("containers delete: exit %d: %s", code, out)
	}
	waitNothingLeft(ctx, t, id)
}

func shimPattern(id string) string { return "containerd-shim-qemu-v1 .*-id " + id + "( |$)" }

// pids lists the processes whose command line matches pattern.
func pids(pattern string) []int {
	out, _ := exec.Command("pgrep", "-f", pattern).Output()
	var ps []int
	for _, f := range strings.Fields(string(out)) {
		if p, err := strconv.Atoi(f); err == nil {
			ps = append(ps, p)
		}
	}
	return ps
}

// waitNothingLeft waits, up to ctx's deadline, until container id has no
// shim, no QEMU, no VM state directory and no bundle, and no shim socket
// made during the run is left without a listener.
func waitNothingLeft(ctx context.Context, t *testing.T, id string) {
	t.Helper()
	var left []string
	for {
		if left = leftovers(id); len(left) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("left behind by %s: %s", id, strings.Join(left, "; "))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func leftovers(id string) []string {
	var out []string
	if p := pids(shimPattern(id)); len(p) > 0 {
		out = append(out, fmt.Sprintf("shim processes %v", p))
	}
	vmDir := filepath.Join(daemon.VMStateRoot(), bundle.VMName(ctrd.Namespace, id))
	if p := pids("qemu-system.*" + vmDir + "/"); len(p) > 0 {
		out = append(out, fmt.Sprintf("QEMU processes %v", p))
	}
	if entries, err := os.ReadDir(daemon.VMStateRoot()); err == nil {
		for _, e := range entries {
			if !vm.StateRootEntry(e.Name()) {
				out = append(out, "VM state directory "+e.Name())
			}
		}
	}
	b := filepath.Join(daemon.Run, "state", "io.containerd.runtime.v2.task", ctrd.Namespace, id)
	if _, err := os.Stat(b); err == nil {
		out = append(out, "bundle "+b)
	}
	for _, path := range ctrd.LeakedShimSockets(started) {
		out = append(out, "shim socket "+path)
	}
	return out
}
