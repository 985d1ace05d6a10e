package e2e

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types/runtimeoptions/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/qemu-shim/qemu-shim/internal/busybox"
	"github.com/qemu-shim/qemu-shim/internal/syncutil"
	"github.com/qemu-shim/qemu-shim/shim/bundle"
	"github.com/qemu-shim/qemu-shim/test/ctrd"
	"github.com/qemu-shim/qemu-shim/vm"
)

type ctr struct {
	t         *testing.T
	container containerd.Container
	task      containerd.Task
	out       *syncutil.Buffer
	exitC     <-chan containerd.ExitStatus
}

// newContainer creates (not starts) a task in its own VM.
func newContainer(ctx context.Context, t *testing.T, id string, stdin io.Reader, terminal bool, opts ...oci.SpecOpts) (*ctr, error) {
	t.Helper()
	return newContainerOn(ctx, t, runtimeName, id, stdin, terminal, opts...)
}

// newContainerOn creates (not starts) a task with the given runtime.
func newContainerOn(ctx context.Context, t *testing.T, runtime, id string, stdin io.Reader, terminal bool, opts ...oci.SpecOpts) (*ctr, error) {
	t.Helper()
	specOpts := append([]oci.SpecOpts{oci.WithImageConfig(env.image)}, opts...)
	if terminal {
		specOpts = append(specOpts, oci.WithTTY)
	}
	c, err := env.client.NewContainer(ctx, id,
		containerd.WithImage(env.image),
		containerd.WithNewSnapshot(id+"-snap", env.image),
		containerd.WithRuntime(runtime, nil),
		containerd.WithNewSpec(specOpts...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.WithoutCancel(ctx)
		if task, err := c.Task(ctx, nil); err == nil {
			task.Kill(ctx, syscall.SIGKILL)
			task.Delete(ctx, containerd.WithProcessKill)
		}
		c.Delete(ctx, containerd.WithSnapshotCleanup)
	})
	out := &syncutil.Buffer{}
	ioOpts := []cio.Opt{cio.WithStreams(stdin, out, out)}
	if terminal {
		ioOpts = append(ioOpts, cio.WithTerminal)
	}
	task, err := c.NewTask(ctx, cio.NewCreator(ioOpts...))
	if err != nil {
		return nil, err
	}
	exitC, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &ctr{t: t, container: c, task: task, out: out, exitC: exitC}, nil
}

func mustContainer(ctx context.Context, t *testing.T, id string, args ...string) *ctr {
	t.Helper()
	c, err := newContainer(ctx, t, id, nil, false, oci.WithProcessArgs(args...))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// finish waits for the exit and deletes the task, returning status and output.
func (c *ctr) finish(ctx context.Context) (uint32, string) {
	c.t.Helper()
	var st containerd.ExitStatus
	select {
	case st = <-c.exitC:
	case <-ctx.Done():
		c.t.Fatalf("no exit: %v", ctx.Err())
	}
	if st.Error() != nil {
		c.t.Fatal(st.Error())
	}
	if _, err := c.task.Delete(ctx); err != nil {
		c.t.Fatal(err)
	}
	return st.ExitCode(), c.out.String()
}

// exec runs args in the container and returns status and output.
func (c *ctr) exec(ctx context.Context, id string, args ...string) (uint32, string) {
	c.t.Helper()
	spec, err := c.container.Spec(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	pspec := *spec.Process
	pspec.Args = args
	pspec.Terminal = false
	out := &syncutil.Buffer{}
	p, err := c.task.Exec(ctx, id, &pspec, cio.NewCreator(cio.WithStreams(nil, out, out)))
	if err != nil {
		c.t.Fatal(err)
	}
	exitC, err := p.Wait(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		c.t.Fatal(err)
	}
	st := <-exitC
	if _, err := p.Delete(ctx); err != nil {
		c.t.Fatal(err)
	}
	return st.ExitCode(), out.String()
}

func TestEchoAndExitCodes(t *testing.T) {
	ctx := requireEnv(t)
	status, out := mustContainer(ctx, t, "echo", "echo", "hello from the VM").finish(ctx)
	if status != 0 || out != "hello from the VM\n" {
		t.Errorf("exit %d, output %q", status, out)
	}
	status, out = mustContainer(ctx, t, "uname", "uname", "-r").finish(ctx)
	host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	if strings.TrimSpace(out) == strings.TrimSpace(string(host)) || status != 0 {
		t.Errorf("container kernel %q (exit %d) is the host's", out, status)
	}
	if status, _ := mustContainer(ctx, t, "exit3", "sh", "-c", "exit 3").finish(ctx); status != 3 {
		t.Errorf("exit %d, want 3", status)
	}
}

func TestExecKillPauseUpdate(t *testing.T) {
	ctx := requireEnv(t)
	// Mount the container's cgroup, as Kubernetes does, to look at its limits.
	c, err := newContainer(ctx, t, "sleeper", nil, false, oci.WithProcessArgs("sleep", "1000"),
		oci.WithMounts([]specs.Mount{{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"ro", "nosuid", "noexec", "nodev"}}}))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.task.Start(ctx); err != nil {
		t.Fatal(err)
	}

	if status, out := c.exec(ctx, "e1", "sh", "-c", "echo from-exec; exit 7"); status != 7 || out != "from-exec\n" {
		t.Errorf("exec: exit %d, output %q", status, out)
	}
	if _, out := c.exec(ctx, "nproc1", "nproc"); strings.TrimSpace(out) != "2" {
		t.Errorf("nproc before update: %q, want the VM's 2 vCPUs", out)
	}
	memBefore := memTotalKiB(t, c, ctx)

	// Update: 3 CPUs of quota and a 512 MiB limit make the VM grow.
	quota, period, limit := int64(300000), uint64(100000), int64(512<<20)
	start := time.Now()
	if err := c.task.Update(ctx, containerd.WithResources(&specs.LinuxResources{
		CPU: &specs.LinuxCPU{Quota: &quota, Period: &period}, Memory: &specs.LinuxMemory{Limit: &limit},
	})); err != nil {
		t.Fatal(err)
	}
	t.Logf("update (hot-plug CPU and memory) took %v", time.Since(start))
	if _, out := c.exec(ctx, "nproc2", "nproc"); strings.TrimSpace(out) != "3" {
		t.Errorf("nproc after update: %q, want 3", out)
	}
	if memAfter := memTotalKiB(t, c, ctx); memAfter < memBefore+400<<10 {
		t.Errorf("MemTotal %d KiB after update, was %d KiB: want ~512 MiB more", memAfter, memBefore)
	}
	if _, out := c.exec(ctx, "cg", "cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/cpu.max"); !strings.Contains(out, "536870912") || !strings.Contains(out, "300000 100000") {
		t.Errorf("container cgroup after update: %q", out)
	}

	// A lower limit gives the memory back, and no quota the vCPUs.
	limit = 64 << 20
	if err := c.task.Update(ctx, containerd.WithResources(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}})); err != nil {
		t.Fatal(err)
	}
	if memShrunk := memTotalKiB(t, c, ctx); memShrunk > memBefore+128<<10 {
		t.Errorf("MemTotal %d KiB after lowering the limit to 64 MiB, was %d KiB before growing", memShrunk, memBefore)
	}
	// Without a CPU quota the VM is back to its two vCPUs (the third
	// ejected, or offlined in the guest under TCG): nproc counts the CPUs
	// it may run on.
	if _, out := c.exec(ctx, "nproc3", "nproc"); strings.TrimSpace(out) != "2" {
		t.Errorf("nproc after dropping the CPU quota: %q, want 2", out)
	}

	if err := c.task.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := c.task.Status(ctx); err != nil || st.Status != containerd.Paused {
		t.Errorf("status after pause: %v %v", st.Status, err)
	}
	if err := c.task.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := c.task.Status(ctx); err != nil || st.Status != containerd.Running {
		t.Errorf("status after resume: %v %v", st.Status, err)
	}
	if pids, err := c.task.Pids(ctx); err != nil || len(pids) == 0 {
		t.Errorf("pids: %v %v", pids, err)
	}
	if _, err := c.task.Metrics(ctx); err != nil {
		t.Errorf("metrics: %v", err)
	}

	if err := c.task.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if status, _ := c.finish(ctx); status != 137 {
		t.Errorf("SIGKILL: exit %d, want 137", status)
	}
}

func memTotalKiB(t *testing.T, c *ctr, ctx context.Context) int {
	t.Helper()
	_, out := c.exec(ctx, "mem"+strconv.FormatInt(time.Now().UnixNano(), 36), "grep", "MemTotal", "/proc/meminfo")
	f := strings.Fields(out)
	if len(f) < 2 {
		t.Fatalf("meminfo: %q", out)
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// TestLargeStdioRoundTrip: 20 MiB through cat's stdin and stdout arrive
// whole, byte for byte, with CloseIO sent right after the start, as with
// the runc shim.
func TestLargeStdioRoundTrip(t *testing.T) {
	ctx := requireEnv(t)
	data := make([]byte, 20<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>11)
	}
	for _, runtime := range []string{runtimeName, "io.containerd.runc.v2"} {
		c, err := newContainerOn(ctx, t, runtime, "big-"+short(runtime), bytes.NewReader(data), false, oci.WithProcessArgs("cat"))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.task.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.task.CloseIO(ctx, containerd.WithStdinCloser); err != nil {
			t.Fatal(err)
		}
		status, out := c.finish(ctx)
		if status != 0 || out != string(data) {
			t.Errorf("%s: exit %d, %d bytes back of %d, same: %v", runtime, status, len(out), len(data), out == string(data))
		}
	}
}

func TestStdinAndTTY(t *testing.T) {
	ctx := requireEnv(t)
	c, err := newContainer(ctx, t, "cat", strings.NewReader("ping\n"), false, oci.WithProcessArgs("cat"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// As ctr does once its stdin ends: the process's stdin ends after what
	// was written (the shim holds the fifo open until then, as runc's does).
	if err := c.task.CloseIO(ctx, containerd.WithStdinCloser); err != nil {
		t.Fatal(err)
	}
	if status, out := c.finish(ctx); status != 0 || out != "ping\n" {
		t.Errorf("cat: exit %d, output %q", status, out)
	}

	r, w := io.Pipe()
	tc, err := newContainer(ctx, t, "tty", r, true, oci.WithProcessArgs("sh", "-c", "read line; stty size"))
	if err != nil {
		t.Fatal(err)
	}
	if err := tc.task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tc.task.Resize(ctx, 77, 33); err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "go\n")
	status, out := tc.finish(ctx)
	w.Close()
	if status != 0 || !strings.Contains(out, "33 77") {
		t.Errorf("tty: exit %d, output %q: want the size 33 77", status, out)
	}
}

func TestTwoContainersAtOnce(t *testing.T) {
	ctx := requireEnv(t)
	var wg sync.WaitGroup
	results := make([]string, 2)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := mustContainer(ctx, t, fmt.Sprintf("twin%d", i), "sh", "-c", fmt.Sprintf("echo twin %d; cat /proc/sys/kernel/random/boot_id", i))
			_, results[i] = c.finish(ctx)
		}()
	}
	wg.Wait()
	for i, r := range results {
		if !strings.HasPrefix(r, fmt.Sprintf("twin %d\n", i)) {
			t.Errorf("container %d printed %q", i, r)
		}
	}
	// Separate VMs boot separate kernels.
	if len(results[0]) > 8 && results[0][8:] == results[1][8:] {
		t.Errorf("both containers report the same kernel boot id: one VM?")
	}
}

// The churn test's size: CI runs a few; a soak runs, say,
// -churn=500 -churn-parallel=8 (with -timeout to match).
var (
	churnCount    = flag.Int("churn", 6, "containers TestChurn creates and deletes")
	churnParallel = flag.Int("churn-parallel", 3, "how many at a time")
)

// TestChurn creates, runs and deletes containers, several at a time, and
// checks that each ran and that nothing is left once they are gone:
// processes, shim sockets, taps, mounts, state directories.
func TestChurn(t *testing.T) {
	requireEnv(t)
	n, par := *churnCount, max(*churnParallel, 1)
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), ctrd.Namespace),
		3*time.Minute+time.Duration((n+par-1)/par)*time.Minute)
	defer cancel()
	began := time.Now()
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			id := fmt.Sprintf("churn%d", i)
			c := mustContainer(ctx, t, id, "echo", id)
			if status, out := c.finish(ctx); status != 0 || out != id+"\n" {
				t.Errorf("%s: exit %d, output %q", id, status, out)
			}
			if err := c.container.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
				t.Errorf("%s: delete: %v", id, err)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d containers, %d at a time, in %v", n, par, time.Since(began).Round(time.Second))
	if l := leftovers(); len(l) > 0 {
		t.Errorf("left behind after %d containers came and went:\n%s", n, strings.Join(l, "\n"))
	}
}

func TestBadInputGivesClearErrors(t *testing.T) {
	ctx := requireEnv(t)
	_, err := newContainer(ctx, t, "badannotation", nil, false, oci.WithProcessArgs("true"), oci.WithAnnotations(map[string]string{"io.qemu-shim.vm.cpus": "lots"}))
	if err == nil || !strings.Contains(err.Error(), "io.qemu-shim.vm.cpus") {
		t.Errorf("bad annotation: %v", err)
	}

	// A configuration naming a kernel that is not there, through ctr run.
	cfg := filepath.Join(env.work, "nokernel.toml")
	os.WriteFile(cfg, []byte("[vm]\nkernel = \"/nonexistent/vmlinux\"\n"), 0o644)
	c, err := env.client.NewContainer(ctx, "nokernel", containerd.WithImage(env.image),
		containerd.WithNewSnapshot("nokernel-snap", env.image),
		containerd.WithRuntime(runtimeName, &runtimeoptions.Options{ConfigPath: cfg}),
		containerd.WithNewSpec(oci.WithImageConfig(env.image), oci.WithProcessArgs("true")))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Delete(context.WithoutCancel(ctx), containerd.WithSnapshotCleanup)
	_, err = c.NewTask(ctx, cio.NullIO)
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/vmlinux") {
		t.Errorf("missing kernel: %v", err)
	}

	out, err := ctrCommand(ctx, "run", "--rm", "--runtime", runtimeName, "--annotation", "io.qemu-shim.vm.memory_mib=-5", busybox.DefaultRef, "ctr-bad", "true").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "io.qemu-shim.vm.memory_mib") {
		t.Errorf("ctr run with a bad annotation: %v: %s", err, out)
	}
	out, err = ctrCommand(ctx, "run", "--rm", "--runtime", runtimeName, "--runtime-config-path", cfg, busybox.DefaultRef, "ctr-nokernel", "true").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "/nonexistent/vmlinux") {
		t.Errorf("ctr run with a missing kernel: %v: %s", err, out)
	} else {
		t.Logf("ctr run says: %s", bytes.TrimSpace(out))
	}
}

// TestPodSharesOneVM: containers with the same group annotation (as a
// Kubernetes pod's sandbox id) run in one VM, which outlives the first.
func TestPodSharesOneVM(t *testing.T) {
	ctx := requireEnv(t)
	group := oci.WithAnnotations(map[string]string{"io.kubernetes.cri.sandbox-id": "pod1"})
	first, err := newContainer(ctx, t, "pod1-pause", nil, false, group, oci.WithProcessArgs("sleep", "1000"))
	if err != nil {
		t.Fatal(err)
	}
	if err := first.task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	_, bootID := first.exec(ctx, "boot", "cat", "/proc/sys/kernel/random/boot_id")
	second, err := newContainer(ctx, t, "pod1-app", nil, false, group, oci.WithProcessArgs("cat", "/proc/sys/kernel/random/boot_id"))
	if err != nil {
		t.Fatal(err)
	}
	if err := second.task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	status, out := second.finish(ctx)
	if status != 0 || out != bootID {
		t.Errorf("second container of the pod: exit %d, boot id %q; the first's is %q", status, out, bootID)
	}
	// One VM for the pod.
	if b, _ := exec.Command("pgrep", "-fc", "qemu-system.*"+vmDir("pod1-pause")+"/").Output(); strings.TrimSpace(string(b)) != "1" {
		t.Errorf("%s QEMU processes for the pod, want 1", strings.TrimSpace(string(b)))
	}
	first.task.Kill(ctx, syscall.SIGKILL)
	if status, _ := first.finish(ctx); status != 137 {
		t.Errorf("pause container: exit %d", status)
	}
}

// TestShimCrashLeavesNoQEMU: when the shim dies, its QEMU dies with it,
// containerd sees the task end, and the state directory goes.
func TestShimCrashLeavesNoQEMU(t *testing.T) {
	ctx := requireEnv(t)
	c := mustContainer(ctx, t, "crash", "sleep", "1000")
	shimPid := pidOf(t, "containerd-shim-qemu-v1.*-id crash( |$)")
	qemuPid := pidOf(t, "qemu-system.*"+vmDir("crash")+"/")
	if err := syscall.Kill(shimPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.exitC:
	case <-ctx.Done():
		t.Fatal("containerd never reported the task's end")
	}
	waitGone := func(pid int) bool { return syscall.Kill(pid, 0) != nil }
	for !waitGone(qemuPid) {
		select {
		case <-ctx.Done():
			t.Fatalf("QEMU %d outlived its shim", qemuPid)
		case <-time.After(20 * time.Millisecond):
		}
	}
	c.task.Delete(ctx)
	// containerd cleans up after a dead shim by running its delete action.
	for {
		if _, err := os.Stat(vmDir("crash")); os.IsNotExist(err) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("state directory of the crashed shim's VM left behind")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// vmDir is the state directory of the VM whose first container is id.
func vmDir(id string) string {
	return filepath.Join(env.VMStateRoot(), bundle.VMName(ctrd.Namespace, id))
}

func pidOf(t *testing.T, pattern string) int {
	t.Helper()
	out, err := exec.Command("pgrep", "-f", pattern).Output()
	if err != nil {
		t.Fatalf("no process matches %q", pattern)
	}
	pid, _ := strconv.Atoi(strings.Fields(string(out))[0])
	return pid
}

// TestQEMUCrash: when the VM dies under a container, containerd sees the
// task killed, and deleting it works and leaves nothing.
func TestQEMUCrash(t *testing.T) {
	ctx := requireEnv(t)
	c := mustContainer(ctx, t, "vmcrash", "sleep", "1000")
	if err := syscall.Kill(pidOf(t, "qemu-system.*"+vmDir("vmcrash")+"/"), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if status, _ := c.finish(ctx); status != 137 {
		t.Errorf("exit %d after the VM died, want 137", status)
	}
}

// TestOOMKilled: a process that allocates without end under a memory
// limit is killed, and the exit is reported promptly, as with runc: 137
// and an OOM event. Each runtime gets the same limit and program.
func TestOOMKilled(t *testing.T) {
	ctx := requireEnv(t)
	for _, rt := range []string{runtimeName, "io.containerd.runc.v2"} {
		id := "oom-" + strings.ReplaceAll(rt, ".", "-")
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		ooms, errs := env.client.Subscribe(sctx, `topic=="/tasks/oom"`)
		began := time.Now()
		c, err := newContainerOn(ctx, t, rt, id, nil, false,
			oci.WithProcessArgs("tail", "/dev/zero"), oci.WithMemoryLimit(128<<20))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.task.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if status, _ := c.finish(ctx); status != 137 {
			t.Errorf("%s: exit %d, want 137 (killed by the OOM killer)", rt, status)
		}
		t.Logf("%s: OOM kill reported %v after create", rt, time.Since(began).Round(time.Millisecond))
		select {
		case e := <-ooms:
			t.Logf("%s: OOM event %s", rt, e.Topic)
		case err := <-errs:
			t.Errorf("%s: event subscription: %v", rt, err)
		case <-time.After(10 * time.Second):
			t.Errorf("%s: no /tasks/oom event", rt)
		}
	}
}

// TestGuestMemoryExhausted: a process with no memory limit that
// allocates without end fills the guest's memory; it is killed (by the
// guest's OOM killer, or with the VM if the guest cannot go on) and the
// exit is reported, not left hanging.
func TestGuestMemoryExhausted(t *testing.T) {
	ctx := requireEnv(t)
	c := mustContainer(ctx, t, "guest-oom", "tail", "/dev/zero")
	if status, _ := c.finish(ctx); status != 137 {
		t.Errorf("exit %d after exhausting the guest's memory, want 137", status)
	}
}

// TestConsoleFlood: a container that writes to the guest's serial console
// (ttyS0) as fast as it can costs the host no more than the configured
// bound on the console log, and its exit is reported as any other.
func TestConsoleFlood(t *testing.T) {
	ctx := requireEnv(t)
	const maxKiB, floodBytes = 8, 64 << 10
	base, err := os.ReadFile(env.ShimConfig())
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "flood.toml")
	if err := os.WriteFile(cfg, bytes.Replace(base, []byte("[vm]\n"), []byte(fmt.Sprintf("[vm]\nconsole_log_max_kib = %d\n", maxKiB)), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := env.client.NewContainer(ctx, "flood", containerd.WithImage(env.image),
		containerd.WithNewSnapshot("flood-snap", env.image),
		containerd.WithRuntime(runtimeName, &runtimeoptions.Options{ConfigPath: cfg}),
		containerd.WithNewSpec(oci.WithImageConfig(env.image), withGuestConsole,
			oci.WithProcessArgs("sh", "-c", fmt.Sprintf("head -c %d /dev/zero | tr '\\0' x > /dev/ttyS0 && echo flooded", floodBytes))))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Delete(context.WithoutCancel(ctx), containerd.WithSnapshotCleanup)
	out := &syncutil.Buffer{}
	task, err := c.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, out, out)))
	if err != nil {
		t.Fatal(err)
	}
	defer task.Delete(context.WithoutCancel(ctx), containerd.WithProcessKill)
	exitC, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case st := <-exitC:
		if st.ExitCode() != 0 || out.String() != "flooded\n" {
			t.Errorf("flooding container: exit %d, output %q", st.ExitCode(), out.String())
		}
	case <-ctx.Done():
		t.Fatalf("no exit while flooding the console: %v", ctx.Err())
	}
	// The VM lives until the task is deleted: its console log is bounded,
	// and rotated, so more than the bound reached the host.
	var sizes []int64
	for _, name := range []string{vm.ConsoleLogName, vm.ConsoleLogOldName} {
		st, err := os.Stat(filepath.Join(vmDir("flood"), name))
		if err != nil {
			t.Fatalf("console log after a %d KiB flood: %v", floodBytes>>10, err)
		}
		if st.Size() > maxKiB<<10 {
			t.Errorf("%s is %d bytes, above the %d KiB bound", name, st.Size(), maxKiB)
		}
		sizes = append(sizes, st.Size())
	}
	t.Logf("console.log %d bytes, console.log.1 %d bytes after a %d KiB flood", sizes[0], sizes[1], floodBytes>>10)
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(vmDir("flood")); !os.IsNotExist(err) {
		t.Errorf("the VM's state directory is left after delete: %v", err)
	}
}

// withGuestConsole gives the container the guest's console (c 5:1, which
// every guest has; the VM's is its first serial port) as /dev/ttyS0.
func withGuestConsole(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
	major, minor, mode := int64(5), int64(1), os.FileMode(0o620)
	s.Linux.Devices = append(s.Linux.Devices, specs.LinuxDevice{Path: "/dev/ttyS0", Type: "c", Major: major, Minor: minor, FileMode: &mode})
	if s.Linux.Resources == nil {
		s.Linux.Resources = &specs.LinuxResources{}
	}
	s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: "c", Major: &major, Minor: &minor, Access: "rw"})
	return nil
}

// TestHungGuest: a guest that no longer answers (its QEMU stopped, as a
// hung kernel would leave it) does not leave the task stuck: a SIGKILL
// ends the VM, containerd sees 137, and deleting the task
// works and leaves nothing.
func TestHungGuest(t *testing.T) {
	ctx := requireEnv(t)
	c := mustContainer(ctx, t, "vmhung", "sleep", "1000")
	qemu := pidOf(t, "qemu-system.*"+vmDir("vmhung")+"/")
	if err := syscall.Kill(qemu, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := c.task.Kill(ctx, syscall.SIGKILL); err != nil {
		syscall.Kill(qemu, syscall.SIGCONT)
		t.Fatalf("SIGKILL of a hung guest's container: %v", err)
	}
	if status, _ := c.finish(ctx); status != 137 {
		t.Errorf("exit %d after SIGKILL of a hung guest's container, want 137", status)
	}
	if err := syscall.Kill(qemu, 0); err == nil {
		t.Errorf("the hung guest's QEMU (pid %d) is still there", qemu)
	}
}

// TestTaskServiceDies: when the guest's task service dies (here a
// container that sees the guest's processes kills it), the VM is ended
// and the container reported killed, not left hanging.
func TestTaskServiceDies(t *testing.T) {
	ctx := requireEnv(t)
	c, err := newContainer(ctx, t, "taskd-dies", nil, false,
		oci.WithProcessArgs("sh", "-c", "killall qemu-shim-taskd; sleep 1000"),
		oci.WithHostNamespace(specs.PIDNamespace))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if status, _ := c.finish(ctx); status != 137 {
		t.Errorf("exit %d after the task service died, want 137", status)
	}
}

// TestZZNothingLeftBehind runs last (tests run in source order).
func TestZZNothingLeftBehind(t *testing.T) {
	requireEnv(t)
	if l := leftovers(); len(l) > 0 {
		t.Errorf("left behind after every container was deleted:\n%s", strings.Join(l, "\n"))
	}
	var images []string
	filepath.Walk(env.work, func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.HasSuffix(p, ".ext4") {
			images = append(images, p)
		}
		return nil
	})
	if len(images) > 0 {
		t.Errorf("writable layer images left: %v", images)
	}
	_ = errors.New
}
