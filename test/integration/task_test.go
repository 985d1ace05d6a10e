package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	cgroupstats "github.com/containerd/cgroups/v3/cgroup2/stats"
	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"

	"github.com/qemu-shim/qemu-shim/api/wire"
	"github.com/qemu-shim/qemu-shim/test/rig"
	"github.com/qemu-shim/qemu-shim/vm"
)

// guestRig wraps rig.Rig so that each step fails the test on error.
type guestRig struct {
	t *testing.T
	*rig.Rig
}

func newGuestRig(t *testing.T) *guestRig {
	t.Helper()
	dir := t.TempDir()
	layer, err := rig.BusyboxLayer(dir)
	if err != nil {
		t.Fatal(err)
	}
	inst := bootVM(t, func(c *vm.Config) {
		c.AllowedDiskRoots = []string{dir}
		c.Disks = []vm.Disk{{ID: rig.LayerSerial, Path: layer, ReadOnly: true}}
	})
	r, err := rig.New(inst, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Disconnect)
	return &guestRig{t: t, Rig: r}
}

func (g *guestRig) must(err error) {
	g.t.Helper()
	if err != nil {
		g.t.Fatal(err)
	}
}

func (g *guestRig) create(ctx context.Context, id string, args []string, o rig.CreateOpts) *rig.Proc {
	g.t.Helper()
	p, err := g.Create(ctx, id, args, o)
	g.must(err)
	return p
}

func (g *guestRig) start(ctx context.Context, id, execID string) {
	g.t.Helper()
	g.must(g.Start(ctx, id, execID))
}

func (g *guestRig) wait(ctx context.Context, id, execID string) uint32 {
	g.t.Helper()
	status, err := g.Wait(ctx, id, execID)
	g.must(err)
	return status
}

func (g *guestRig) remove(ctx context.Context, id string) {
	g.t.Helper()
	g.must(g.Remove(ctx, id))
}

func (g *guestRig) run(ctx context.Context, id string, args ...string) (uint32, string) {
	g.t.Helper()
	status, out, err := g.Run(ctx, id, args...)
	g.must(err)
	return status, out
}

func (g *guestRig) openStdio(ctx context.Context, name string, stdin, terminal bool) *rig.Proc {
	g.t.Helper()
	p, err := g.OpenStdio(ctx, name, stdin, terminal)
	g.must(err)
	return p
}

func (g *guestRig) exec(ctx context.Context, id, execID string, p *rig.Proc, args ...string) {
	g.t.Helper()
	g.must(g.Exec(ctx, id, execID, p, args...))
}

func (g *guestRig) waitEvent(ctx context.Context, topic string, match func(any) bool) any {
	g.t.Helper()
	v, err := g.WaitEvent(ctx, topic, match)
	g.must(err)
	return v
}

func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v", what, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func TestContainerLifecycle(t *testing.T) {
	t.Parallel()
	g := newGuestRig(t)
	ctx := testContext(t)

	t.Run("echo", func(t *testing.T) {
		status, out := g.run(ctx, "echo", "echo", "hello")
		if status != 0 || out != "hello\n" {
			t.Errorf("exit %d, output %q; want 0, \"hello\\n\"", status, out)
		}
		g.waitEvent(ctx, "/tasks/delete", func(v any) bool { return v.(*eventstypes.TaskDelete).ContainerID == "echo" })
		want := []string{"/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"}
		if got := g.Topics("echo"); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("events %v, want %v", got, want)
		}
	})

	t.Run("exit code", func(t *testing.T) {
		if status, _ := g.run(ctx, "exit3", "sh", "-c", "exit 3"); status != 3 {
			t.Errorf("exit %d, want 3", status)
		}
	})

	t.Run("kill, exec, stdin", func(t *testing.T) {
		g.create(ctx, "sleeper", []string{"sleep", "1000"}, rig.CreateOpts{})
		g.start(ctx, "sleeper", "")

		// An exec with its own exit code and output.
		ep := g.openStdio(ctx, "sleeper-e1", false, false)
		g.exec(ctx, "sleeper", "e1", ep, "sh", "-c", "echo from-exec; exit 7")
		if err := g.Exec(ctx, "sleeper", "e1", nil, "true"); !errors.Is(errgrpc.ToNative(err), errdefs.ErrAlreadyExists) {
			t.Errorf("duplicate exec id: got %v", err)
		}
		g.start(ctx, "sleeper", "e1")
		if status := g.wait(ctx, "sleeper", "e1"); status != 7 {
			t.Errorf("exec exit %d, want 7", status)
		}
		<-ep.OutEOF
		if out := ep.Out.String(); out != "from-exec\n" {
			t.Errorf("exec output %q", out)
		}

		// stdin round trip through cat, ended by closing stdin.
		cp := g.openStdio(ctx, "sleeper-cat", true, false)
		g.exec(ctx, "sleeper", "cat", cp, "cat")
		g.start(ctx, "sleeper", "cat")
		io.WriteString(cp.Stdin, "ping\n")
		cp.Stdin.Close()
		if status := g.wait(ctx, "sleeper", "cat"); status != 0 {
			t.Errorf("cat exit %d", status)
		}
		<-cp.OutEOF
		if out := cp.Out.String(); out != "ping\n" {
			t.Errorf("cat echoed %q, want \"ping\\n\"", out)
		}

		// SIGTERM ends an exec'd sleep with 143 (signal 15 + 128).
		g.exec(ctx, "sleeper", "term", nil, "sleep", "1000")
		g.start(ctx, "sleeper", "term")
		if _, err := g.Tasks.Kill(ctx, &taskAPI.KillRequest{ID: "sleeper", ExecID: "term", Signal: 15}); err != nil {
			t.Fatal(err)
		}
		if status := g.wait(ctx, "sleeper", "term"); status != 143 {
			t.Errorf("SIGTERM: exit %d, want 143", status)
		}
		pids, err := g.Tasks.Pids(ctx, &taskAPI.PidsRequest{ID: "sleeper"})
		if err != nil || len(pids.Processes) == 0 {
			t.Errorf("pids: %v %v", pids, err)
		}
		// SIGKILL ends init with 137; the init's exit comes after its execs'.
		if _, err := g.Tasks.Kill(ctx, &taskAPI.KillRequest{ID: "sleeper", Signal: 9}); err != nil {
			t.Fatal(err)
		}
		if status := g.wait(ctx, "sleeper", ""); status != 137 {
			t.Errorf("SIGKILL: exit %d, want 137", status)
		}
		if _, err := g.Tasks.Kill(ctx, &taskAPI.KillRequest{ID: "sleeper", Signal: 9}); !errors.Is(errgrpc.ToNative(err), errdefs.ErrNotFound) {
			t.Errorf("kill after exit: got %v, want not found", err)
		}
		st, err := g.Tasks.State(ctx, &taskAPI.StateRequest{ID: "sleeper"})
		if err != nil || st.Status != tasktypes.Status_STOPPED || st.ExitStatus != 137 {
			t.Errorf("state after kill: %v %v", st, err)
		}
		g.remove(ctx, "sleeper")
		topics := g.Topics("sleeper")
		if topics[len(topics)-2] != "/tasks/exit" || topics[len(topics)-1] != "/tasks/delete" {
			t.Errorf("events end with %v", topics)
		}
	})

	t.Run("tty resize", func(t *testing.T) {
		p := g.create(ctx, "tty", []string{"sh", "-c", "read line; stty size"}, rig.CreateOpts{Stdin: true, Terminal: true})
		g.start(ctx, "tty", "")
		if _, err := g.Tasks.ResizePty(ctx, &taskAPI.ResizePtyRequest{ID: "tty", Width: 77, Height: 33}); err != nil {
			t.Fatal(err)
		}
		io.WriteString(p.Stdin, "go\n")
		if status := g.wait(ctx, "tty", ""); status != 0 {
			t.Errorf("exit %d", status)
		}
		<-p.OutEOF
		if out := p.Out.String(); !strings.Contains(out, "33 77") {
			t.Errorf("terminal output %q lacks the new size 33 77", out)
		}
		p.Stdin.Close()
		g.remove(ctx, "tty")
	})

	t.Run("stats, pause, resume", func(t *testing.T) {
		p := g.create(ctx, "busy", []string{"sh", "-c", "i=0; while true; do i=$((i+1)); echo $i; usleep 20000; done"}, rig.CreateOpts{})
		g.start(ctx, "busy", "")
		waitFor(ctx, t, "output", func() bool { return strings.Count(p.Out.String(), "\n") > 3 })
		r, err := g.Tasks.Stats(ctx, &taskAPI.StatsRequest{ID: "busy"})
		if err != nil {
			t.Fatal(err)
		}
		v, err := typeurl.UnmarshalAny(r.Stats)
		if err != nil {
			t.Fatal(err)
		}
		m, ok := v.(*cgroupstats.Metrics)
		if !ok || m.CPU.GetUsageUsec() == 0 || m.Memory.GetUsage() == 0 {
			t.Errorf("stats %T: cpu %d µs, memory %d bytes: want both non-zero", v, m.GetCPU().GetUsageUsec(), m.GetMemory().GetUsage())
		}
		if _, err := g.Tasks.Pause(ctx, &taskAPI.PauseRequest{ID: "busy"}); err != nil {
			t.Fatal(err)
		}
		st, _ := g.Tasks.State(ctx, &taskAPI.StateRequest{ID: "busy"})
		if st.GetStatus() != tasktypes.Status_PAUSED {
			t.Errorf("state %v after pause", st.GetStatus())
		}
		frozen := p.Out.String()
		// Frozen: no line may appear during a window of 15 loop periods.
		time.Sleep(300 * time.Millisecond)
		if p.Out.String() != frozen {
			t.Error("output kept coming while paused")
		}
		if _, err := g.Tasks.Resume(ctx, &taskAPI.ResumeRequest{ID: "busy"}); err != nil {
			t.Fatal(err)
		}
		waitFor(ctx, t, "output after resume", func() bool { return len(p.Out.String()) > len(frozen) })
		g.waitEvent(ctx, "/tasks/paused", nil)
		g.waitEvent(ctx, "/tasks/resumed", nil)
		g.Tasks.Kill(ctx, &taskAPI.KillRequest{ID: "busy", Signal: 9})
		g.wait(ctx, "busy", "")
		g.remove(ctx, "busy")
	})

	t.Run("oom", func(t *testing.T) {
		g.create(ctx, "oom", []string{"dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"}, rig.CreateOpts{Spec: []oci.SpecOpts{oci.WithMemoryLimit(32 << 20)}})
		g.start(ctx, "oom", "")
		if status := g.wait(ctx, "oom", ""); status != 137 {
			t.Errorf("exit %d, want 137 (killed by the OOM killer)", status)
		}
		g.waitEvent(ctx, "/tasks/oom", func(v any) bool { return v.(*eventstypes.TaskOOM).ContainerID == "oom" })
		g.remove(ctx, "oom")
	})

	t.Run("delete removes mounts", func(t *testing.T) {
		info, err := g.Inst.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range info.Mounts {
			if strings.HasPrefix(m, "/run/qemu-shim/containers/") {
				t.Errorf("mount %s left in the guest after every container was deleted", m)
			}
		}
	})

	t.Run("bad requests", func(t *testing.T) {
		_, err := g.Tasks.Create(ctx, &taskAPI.CreateTaskRequest{ID: "../escape", Options: wire.SpecAny([]byte("{}"))})
		if !errors.Is(errgrpc.ToNative(err), errdefs.ErrInvalidArgument) {
			t.Errorf("bad id: %v", err)
		}
		_, err = g.Tasks.Create(ctx, &taskAPI.CreateTaskRequest{ID: "nospec"})
		if !errors.Is(errgrpc.ToNative(err), errdefs.ErrInvalidArgument) {
			t.Errorf("no spec: %v", err)
		}
		_, err = g.Tasks.Create(ctx, &taskAPI.CreateTaskRequest{ID: "badmount", Options: wire.SpecAny([]byte(`{"process":{"args":["true"]}}`)),
			Rootfs: []*types.Mount{{Type: "nfs", Source: "serial:bbx"}}})
		if !errors.Is(errgrpc.ToNative(err), errdefs.ErrInvalidArgument) || !strings.Contains(fmt.Sprint(err), "nfs") {
			t.Errorf("bad mount type: %v", err)
		}
		if _, err := g.Tasks.State(ctx, &taskAPI.StateRequest{ID: "missing"}); !errors.Is(errgrpc.ToNative(err), errdefs.ErrNotFound) {
			t.Errorf("state of a missing container: %v", err)
		}
		// The agent still serves.
		if _, err := g.Inst.Info(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("exit while disconnected", func(t *testing.T) {
		// The trap must be in place before SIGTERM: PID 1 of a container
		// ignores signals it has no handler for.
		p := g.create(ctx, "away", []string{"sh", "-c", "trap 'usleep 200000; exit 9' TERM; echo ready; while true; do usleep 50000; done"}, rig.CreateOpts{})
		g.start(ctx, "away", "")
		waitFor(ctx, t, "the trap", func() bool { return strings.Contains(p.Out.String(), "ready") })
		if _, err := g.Tasks.Kill(ctx, &taskAPI.KillRequest{ID: "away", Signal: 15}); err != nil {
			t.Fatal(err)
		}
		g.Disconnect()
		// Stay away past the exit (0.2 s after SIGTERM).
		time.Sleep(time.Second)
		g.must(g.Inst.Reconnect(ctx))
		g.must(g.Connect())
		exit := g.waitEvent(ctx, "/tasks/exit", func(v any) bool { return v.(*eventstypes.TaskExit).ContainerID == "away" }).(*eventstypes.TaskExit)
		if exit.ExitStatus != 9 {
			t.Errorf("exit %d, want 9", exit.ExitStatus)
		}
		g.remove(ctx, "away")
	})
}
