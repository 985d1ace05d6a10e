package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cgroupstats "github.com/containerd/cgroups/v3/cgroup2/stats"
	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"

	guesttask "github.com/qemu-shim/qemu-shim/guest/task"
	"github.com/qemu-shim/qemu-shim/task/conn"
	eventsapi "github.com/qemu-shim/qemu-shim/task/events/v1"
	"github.com/qemu-shim/qemu-shim/test/testimage"
	"github.com/qemu-shim/qemu-shim/vm"
)

// guestRig is one booted VM with the busybox layer attached, and an event
// collector on the agent.
type guestRig struct {
	t     *testing.T
	inst  *vm.Instance
	dir   string
	tasks taskAPI.TTRPCTaskService

	mu      sync.Mutex
	events  []*eventsapi.Envelope
	lastSeq uint64
	changed chan struct{}
	stop    context.CancelFunc
}

func newGuestRig(t *testing.T) *guestRig {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "busybox")
	if err := testimage.BusyboxRoot(root); err != nil {
		t.Fatal(err)
	}
	layer := filepath.Join(dir, "busybox.erofs")
	if err := testimage.Erofs(root, layer); err != nil {
		t.Fatal(err)
	}
	inst := bootVM(t, func(c *vm.Config) {
		c.AllowedDiskRoots = []string{dir}
		c.Disks = []vm.Disk{{ID: "bbx", Path: layer, ReadOnly: true}}
	})
	g := &guestRig{t: t, inst: inst, dir: dir, changed: make(chan struct{})}
	g.connect()
	t.Cleanup(func() { g.stop() })
	return g
}

// connect (re)attaches the task client and the event stream, asking for
// every event after the last one seen.
func (g *guestRig) connect() {
	g.tasks = taskAPI.NewTTRPCTaskClient(g.inst.Client())
	ctx, cancel := context.WithCancel(context.Background())
	g.stop = cancel
	g.mu.Lock()
	after := g.lastSeq
	g.mu.Unlock()
	stream, err := eventsapi.NewEventsClient(g.inst.Client()).Stream(ctx, &eventsapi.StreamRequest{After: after})
	if err != nil {
		g.t.Fatal(err)
	}
	go func() {
		for {
			e, err := stream.Recv()
			if err != nil {
				return
			}
			g.mu.Lock()
			if e.Seq > g.lastSeq {
				g.events = append(g.events, e)
				g.lastSeq = e.Seq
				close(g.changed)
				g.changed = make(chan struct{})
			}
			g.mu.Unlock()
		}
	}()
}

// waitEvent waits for an event of topic for container id matching match.
func (g *guestRig) waitEvent(ctx context.Context, topic string, match func(any) bool) any {
	g.t.Helper()
	seen := 0
	for {
		g.mu.Lock()
		evs := g.events[seen:]
		changed := g.changed
		g.mu.Unlock()
		for _, e := range evs {
			seen++
			if e.Topic != topic {
				continue
			}
			v, err := typeurl.UnmarshalAny(e.Event)
			if err != nil {
				g.t.Fatal(err)
			}
			if match == nil || match(v) {
				return v
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			g.t.Fatalf("no %s event: %v", topic, ctx.Err())
		}
	}
}

// topics returns the topics of the events for container id, in order.
func (g *guestRig) topics(id string) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for _, e := range g.events {
		v, err := typeurl.UnmarshalAny(e.Event)
		if err != nil {
			continue
		}
		if c, ok := v.(interface{ GetContainerID() string }); ok && c.GetContainerID() == id {
			out = append(out, e.Topic)
		}
	}
	return out
}

// proc is the host's end of a process's stdio.
type proc struct {
	stdin  net.Conn
	out    *syncBuffer
	outEOF chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// openStdio opens the streams for one process; stdout and stderr both
// collect into out.
func (g *guestRig) openStdio(ctx context.Context, name string, stdin, terminal bool) (*proc, [3]string) {
	g.t.Helper()
	p := &proc{out: &syncBuffer{}, outEOF: make(chan struct{})}
	var fields [3]string
	var wg sync.WaitGroup
	outputs := []string{"stdout"}
	if !terminal {
		outputs = append(outputs, "stderr")
	}
	for i, kind := range outputs {
		c, err := g.inst.DialStream(ctx, name+"-"+kind)
		if err != nil {
			g.t.Fatal(err)
		}
		fields[i+1] = conn.StreamPrefix + name + "-" + kind
		wg.Add(1)
		go func() {
			defer wg.Done()
			io.Copy(p.out, c)
			c.Close()
		}()
	}
	go func() { wg.Wait(); close(p.outEOF) }()
	if stdin {
		c, err := g.inst.DialStream(ctx, name+"-stdin")
		if err != nil {
			g.t.Fatal(err)
		}
		p.stdin = c
		fields[0] = conn.StreamPrefix + name + "-stdin"
	}
	return p, fields
}

type createOpts struct {
	stdin, terminal bool
	spec            []oci.SpecOpts
}

// create makes a container from the busybox layer with its own writable
// disk.
func (g *guestRig) create(ctx context.Context, id string, args []string, o createOpts) *proc {
	g.t.Helper()
	upper := filepath.Join(g.dir, id+".ext4")
	if err := testimage.EmptyExt4(upper, 32); err != nil {
		g.t.Fatal(err)
	}
	serial := "u-" + id
	if err := g.inst.AttachDisk(ctx, vm.Disk{ID: serial, Path: upper}); err != nil {
		g.t.Fatal(err)
	}
	opts := append([]oci.SpecOpts{oci.WithDefaultPathEnv, oci.WithProcessArgs(args...)}, o.spec...)
	if o.terminal {
		opts = append(opts, oci.WithTTY)
	}
	spec, err := oci.GenerateSpec(namespaces.WithNamespace(ctx, "test"), nil, &containers.Container{ID: id}, opts...)
	if err != nil {
		g.t.Fatal(err)
	}
	config, err := json.Marshal(spec)
	if err != nil {
		g.t.Fatal(err)
	}
	p, fields := g.openStdio(ctx, id, o.stdin, o.terminal)
	_, err = g.tasks.Create(ctx, &taskAPI.CreateTaskRequest{
		ID: id, Bundle: "/host/bundles/" + id, Terminal: o.terminal,
		Rootfs: []*types.Mount{
			{Type: "erofs", Source: guesttask.SerialPrefix + "bbx", Options: []string{"ro"}},
			{Type: "ext4", Source: guesttask.SerialPrefix + serial},
		},
		Stdin: fields[0], Stdout: fields[1], Stderr: fields[2],
		Options: guesttask.SpecAny(config),
	})
	if err != nil {
		g.t.Fatal(err)
	}
	return p
}

func (g *guestRig) start(ctx context.Context, id, execID string) {
	g.t.Helper()
	if _, err := g.tasks.Start(ctx, &taskAPI.StartRequest{ID: id, ExecID: execID}); err != nil {
		g.t.Fatal(err)
	}
}

func (g *guestRig) wait(ctx context.Context, id, execID string) uint32 {
	g.t.Helper()
	r, err := g.tasks.Wait(ctx, &taskAPI.WaitRequest{ID: id, ExecID: execID})
	if err != nil {
		g.t.Fatal(err)
	}
	return r.ExitStatus
}

// remove deletes the container and detaches its writable disk.
func (g *guestRig) remove(ctx context.Context, id string) {
	g.t.Helper()
	if _, err := g.tasks.Delete(ctx, &taskAPI.DeleteRequest{ID: id}); err != nil {
		g.t.Fatal(err)
	}
	if err := g.inst.DetachDisk(ctx, "u-"+id); err != nil {
		g.t.Fatal(err)
	}
}

// run creates, starts, waits for and deletes a container; it returns the
// exit status and the output.
func (g *guestRig) run(ctx context.Context, id string, args ...string) (uint32, string) {
	g.t.Helper()
	p := g.create(ctx, id, args, createOpts{})
	g.start(ctx, id, "")
	status := g.wait(ctx, id, "")
	<-p.outEOF
	g.remove(ctx, id)
	return status, p.out.String()
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

func execSpec(t *testing.T, args ...string) *anypb.Any {
	b, err := json.Marshal(map[string]any{"args": args, "cwd": "/", "env": []string{"PATH=/bin:/usr/bin:/sbin"}, "user": map[string]int{"uid": 0, "gid": 0}})
	if err != nil {
		t.Fatal(err)
	}
	return &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: b}
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
		if got := g.topics("echo"); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("events %v, want %v", got, want)
		}
	})

	t.Run("exit code", func(t *testing.T) {
		if status, _ := g.run(ctx, "exit3", "sh", "-c", "exit 3"); status != 3 {
			t.Errorf("exit %d, want 3", status)
		}
	})

	t.Run("kill, exec, stdin", func(t *testing.T) {
		g.create(ctx, "sleeper", []string{"sleep", "1000"}, createOpts{})
		g.start(ctx, "sleeper", "")

		// An exec with its own exit code and output.
		ep, fields := g.openStdio(ctx, "sleeper-e1", false, false)
		if _, err := g.tasks.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "sleeper", ExecID: "e1", Stdout: fields[1], Stderr: fields[2], Spec: execSpec(t, "sh", "-c", "echo from-exec; exit 7")}); err != nil {
			t.Fatal(err)
		}
		if _, err := g.tasks.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "sleeper", ExecID: "e1", Spec: execSpec(t, "true")}); !errors.Is(errgrpc.ToNative(err), errdefs.ErrAlreadyExists) {
			t.Errorf("duplicate exec id: got %v", err)
		}
		g.start(ctx, "sleeper", "e1")
		if status := g.wait(ctx, "sleeper", "e1"); status != 7 {
			t.Errorf("exec exit %d, want 7", status)
		}
		<-ep.outEOF
		if out := ep.out.String(); out != "from-exec\n" {
			t.Errorf("exec output %q", out)
		}

		// stdin round trip through cat, ended by closing stdin.
		cp, fields := g.openStdio(ctx, "sleeper-cat", true, false)
		if _, err := g.tasks.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "sleeper", ExecID: "cat", Stdin: fields[0], Stdout: fields[1], Stderr: fields[2], Spec: execSpec(t, "cat")}); err != nil {
			t.Fatal(err)
		}
		g.start(ctx, "sleeper", "cat")
		io.WriteString(cp.stdin, "ping\n")
		cp.stdin.Close()
		if status := g.wait(ctx, "sleeper", "cat"); status != 0 {
			t.Errorf("cat exit %d", status)
		}
		<-cp.outEOF
		if out := cp.out.String(); out != "ping\n" {
			t.Errorf("cat echoed %q, want \"ping\\n\"", out)
		}

		// SIGTERM ends an exec'd sleep with 143 (signal 15 + 128).
		if _, err := g.tasks.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "sleeper", ExecID: "term", Spec: execSpec(t, "sleep", "1000")}); err != nil {
			t.Fatal(err)
		}
		g.start(ctx, "sleeper", "term")
		if _, err := g.tasks.Kill(ctx, &taskAPI.KillRequest{ID: "sleeper", ExecID: "term", Signal: 15}); err != nil {
			t.Fatal(err)
		}
		if status := g.wait(ctx, "sleeper", "term"); status != 143 {
			t.Errorf("SIGTERM: exit %d, want 143", status)
		}
		pids, err := g.tasks.Pids(ctx, &taskAPI.PidsRequest{ID: "sleeper"})
		if err != nil || len(pids.Processes) == 0 {
			t.Errorf("pids: %v %v", pids, err)
		}
		// SIGKILL ends init with 137; the init's exit comes after its execs'.
		if _, err := g.tasks.Kill(ctx, &taskAPI.KillRequest{ID: "sleeper", Signal: 9}); err != nil {
			t.Fatal(err)
		}
		if status := g.wait(ctx, "sleeper", ""); status != 137 {
			t.Errorf("SIGKILL: exit %d, want 137", status)
		}
		if _, err := g.tasks.Kill(ctx, &taskAPI.KillRequest{ID: "sleeper", Signal: 9}); !errors.Is(errgrpc.ToNative(err), errdefs.ErrNotFound) {
			t.Errorf("kill after exit: got %v, want not found", err)
		}
		st, err := g.tasks.State(ctx, &taskAPI.StateRequest{ID: "sleeper"})
		if err != nil || st.Status != tasktypes.Status_STOPPED || st.ExitStatus != 137 {
			t.Errorf("state after kill: %v %v", st, err)
		}
		g.remove(ctx, "sleeper")
		topics := g.topics("sleeper")
		if topics[len(topics)-2] != "/tasks/exit" || topics[len(topics)-1] != "/tasks/delete" {
			t.Errorf("events end with %v", topics)
		}
	})

	t.Run("tty resize", func(t *testing.T) {
		p := g.create(ctx, "tty", []string{"sh", "-c", "read line; stty size"}, createOpts{stdin: true, terminal: true})
		g.start(ctx, "tty", "")
		if _, err := g.tasks.ResizePty(ctx, &taskAPI.ResizePtyRequest{ID: "tty", Width: 77, Height: 33}); err != nil {
			t.Fatal(err)
		}
		io.WriteString(p.stdin, "go\n")
		if status := g.wait(ctx, "tty", ""); status != 0 {
			t.Errorf("exit %d", status)
		}
		<-p.outEOF
		if out := p.out.String(); !strings.Contains(out, "33 77") {
			t.Errorf("terminal output %q lacks the new size 33 77", out)
		}
		p.stdin.Close()
		g.remove(ctx, "tty")
	})

	t.Run("stats, pause, resume", func(t *testing.T) {
		p := g.create(ctx, "busy", []string{"sh", "-c", "i=0; while true; do i=$((i+1)); echo $i; usleep 20000; done"}, createOpts{})
		g.start(ctx, "busy", "")
		waitFor(ctx, t, "output", func() bool { return strings.Count(p.out.String(), "\n") > 3 })
		r, err := g.tasks.Stats(ctx, &taskAPI.StatsRequest{ID: "busy"})
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
		if _, err := g.tasks.Pause(ctx, &taskAPI.PauseRequest{ID: "busy"}); err != nil {
			t.Fatal(err)
		}
		st, _ := g.tasks.State(ctx, &taskAPI.StateRequest{ID: "busy"})
		if st.GetStatus() != tasktypes.Status_PAUSED {
			t.Errorf("state %v after pause", st.GetStatus())
		}
		frozen := p.out.String()
		// Frozen: no line may appear during a window of 15 loop periods.
		time.Sleep(300 * time.Millisecond)
		if p.out.String() != frozen {
			t.Error("output kept coming while paused")
		}
		if _, err := g.tasks.Resume(ctx, &taskAPI.ResumeRequest{ID: "busy"}); err != nil {
			t.Fatal(err)
		}
		waitFor(ctx, t, "output after resume", func() bool { return len(p.out.String()) > len(frozen) })
		g.waitEvent(ctx, "/tasks/paused", nil)
		g.waitEvent(ctx, "/tasks/resumed", nil)
		g.tasks.Kill(ctx, &taskAPI.KillRequest{ID: "busy", Signal: 9})
		g.wait(ctx, "busy", "")
		g.remove(ctx, "busy")
	})

	t.Run("oom", func(t *testing.T) {
		g.create(ctx, "oom", []string{"dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"}, createOpts{spec: []oci.SpecOpts{oci.WithMemoryLimit(32 << 20)}})
		g.start(ctx, "oom", "")
		if status := g.wait(ctx, "oom", ""); status != 137 {
			t.Errorf("exit %d, want 137 (killed by the OOM killer)", status)
		}
		g.waitEvent(ctx, "/tasks/oom", func(v any) bool { return v.(*eventstypes.TaskOOM).ContainerID == "oom" })
		g.remove(ctx, "oom")
	})

	t.Run("delete removes mounts", func(t *testing.T) {
		info, err := g.inst.Info(ctx)
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
		_, err := g.tasks.Create(ctx, &taskAPI.CreateTaskRequest{ID: "../escape", Options: guesttask.SpecAny([]byte("{}"))})
		if !errors.Is(errgrpc.ToNative(err), errdefs.ErrInvalidArgument) {
			t.Errorf("bad id: %v", err)
		}
		_, err = g.tasks.Create(ctx, &taskAPI.CreateTaskRequest{ID: "nospec"})
		if !errors.Is(errgrpc.ToNative(err), errdefs.ErrInvalidArgument) {
			t.Errorf("no spec: %v", err)
		}
		_, err = g.tasks.Create(ctx, &taskAPI.CreateTaskRequest{ID: "badmount", Options: guesttask.SpecAny([]byte(`{"process":{"args":["true"]}}`)),
			Rootfs: []*types.Mount{{Type: "nfs", Source: "serial:bbx"}}})
		if !errors.Is(errgrpc.ToNative(err), errdefs.ErrInvalidArgument) || !strings.Contains(fmt.Sprint(err), "nfs") {
			t.Errorf("bad mount type: %v", err)
		}
		if _, err := g.tasks.State(ctx, &taskAPI.StateRequest{ID: "missing"}); !errors.Is(errgrpc.ToNative(err), errdefs.ErrNotFound) {
			t.Errorf("state of a missing container: %v", err)
		}
		// The agent still serves.
		if _, err := g.inst.Info(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("exit while disconnected", func(t *testing.T) {
		g.create(ctx, "away", []string{"sh", "-c", "trap 'usleep 200000; exit 9' TERM; while true; do usleep 50000; done"}, createOpts{})
		g.start(ctx, "away", "")
		if _, err := g.tasks.Kill(ctx, &taskAPI.KillRequest{ID: "away", Signal: 15}); err != nil {
			t.Fatal(err)
		}
		g.stop()
		reconnectCtx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		// Stay away past the exit (0.2 s after SIGTERM).
		time.Sleep(time.Second)
		if err := g.inst.Reconnect(reconnectCtx); err != nil {
			t.Fatal(err)
		}
		g.connect()
		exit := g.waitEvent(ctx, "/tasks/exit", func(v any) bool { return v.(*eventstypes.TaskExit).ContainerID == "away" }).(*eventstypes.TaskExit)
		if exit.ExitStatus != 9 {
			t.Errorf("exit %d, want 9", exit.ExitStatus)
		}
		g.remove(ctx, "away")
	})
	_ = os.Getpid
}
