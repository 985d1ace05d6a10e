package task

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	eventsapi "github.com/qemu-shim/qemu-shim/api/events/v1"
	"github.com/qemu-shim/qemu-shim/shim/config"
	"github.com/qemu-shim/qemu-shim/shim/sandbox"
)

// fakeGuest is the guest's task service: it answers Create and Start,
// and Kill as told.
type fakeGuest struct {
	taskAPI.TTRPCTaskService // the calls a test does not make
	sb                       *fakeSandbox
	// hangKill makes Kill wait for its deadline, as a hung guest.
	hangKill bool
	// deletes counts the Delete calls.
	deletes atomic.Int32
}

func (g *fakeGuest) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	if r.ID == "refused" {
		return nil, errgrpc.ToGRPC(errors.Join(errors.New("runc create failed"), errdefs.ErrFailedPrecondition))
	}
	g.sb.send(runtime.TaskCreateEventTopic, &eventstypes.TaskCreate{ContainerID: r.ID, Bundle: "/guest/bundle", Pid: 7,
		IO: &eventstypes.TaskIO{Stdout: r.Stdout}})
	return &taskAPI.CreateTaskResponse{Pid: 7}, nil
}

func (g *fakeGuest) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	if r.ExecID != "" {
		return &taskAPI.StartResponse{Pid: 8}, nil
	}
	return &taskAPI.StartResponse{Pid: 7}, nil
}

func (g *fakeGuest) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (g *fakeGuest) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (g *fakeGuest) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	g.deletes.Add(1)
	return &taskAPI.DeleteResponse{Pid: 7, ExitStatus: 3}, nil
}

func (g *fakeGuest) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (g *fakeGuest) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (g *fakeGuest) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	if g.hangKill {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &emptypb.Empty{}, nil
}

// fakeSandbox stands in for the VM: its guest is fakeGuest, its event
// stream is fed by the test, its stdio streams are pipes whose guest ends
// the test holds.
type fakeSandbox struct {
	guest  *fakeGuest
	events chan *eventsapi.Envelope
	done   chan struct{}
	stop   sync.Once

	mu       sync.Mutex
	seq      uint64
	streams  map[string]net.Conn
	released map[string]bool // container → last
	sizes    []string        // "grow C M" and "shrink C M", in order
}

func newFakeSandbox() *fakeSandbox {
	sb := &fakeSandbox{events: make(chan *eventsapi.Envelope, 64), done: make(chan struct{}),
		streams: map[string]net.Conn{}, released: map[string]bool{}}
	sb.guest = &fakeGuest{sb: sb}
	return sb
}

func (f *fakeSandbox) send(topic string, v any) {
	a, err := typeurl.MarshalAnyToProto(v)
	if err != nil {
		panic(err)
	}
	f.mu.Lock()
	f.seq++
	e := &eventsapi.Envelope{Seq: f.seq, Topic: topic, Event: a}
	f.mu.Unlock()
	f.events <- e
}

// guestEnd is the guest's end of a stdio stream.
func (f *fakeSandbox) guestEnd(t *testing.T, name string) net.Conn {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.streams[name]
	if !ok {
		t.Fatalf("no stream %s", name)
	}
	return c
}

func (f *fakeSandbox) Tasks(context.Context) (taskAPI.TTRPCTaskService, error) { return f.guest, nil }

func (f *fakeSandbox) Events(ctx context.Context, after uint64) (eventsapi.Events_StreamClient, error) {
	return &fakeStream{ctx: ctx, events: f.events, done: f.done}, nil
}

func (f *fakeSandbox) DialStream(ctx context.Context, name string) (net.Conn, error) {
	host, guest := net.Pipe()
	f.mu.Lock()
	f.streams[name] = guest
	f.mu.Unlock()
	return host, nil
}

func (f *fakeSandbox) AttachRootfs(ctx context.Context, id, bundle string, rootfs []*types.Mount) ([]*types.Mount, error) {
	return []*types.Mount{{Type: "erofs", Source: "serial:l1"}}, nil
}
func (f *fakeSandbox) AttachBlockDevice(ctx context.Context, id, path string, readOnly bool) (string, error) {
	return "b1", nil
}
func (f *fakeSandbox) JoinNetwork(ctx context.Context, id, path string) error { return nil }
func (f *fakeSandbox) NetworkPath() string                                    { return "" }
func (f *fakeSandbox) Stage(id string, mounts []specs.Mount) ([]specs.Mount, error) {
	return mounts, nil
}
func (f *fakeSandbox) Release(ctx context.Context, id string, last bool) {
	f.mu.Lock()
	f.released[id] = last
	f.mu.Unlock()
}
func (f *fakeSandbox) Grow(ctx context.Context, cpus, memMiB int) error {
	f.mu.Lock()
	f.sizes = append(f.sizes, fmt.Sprintf("grow %d %d", cpus, memMiB))
	f.mu.Unlock()
	return nil
}
func (f *fakeSandbox) Shrink(ctx context.Context, cpus, memMiB int) {
	f.mu.Lock()
	f.sizes = append(f.sizes, fmt.Sprintf("shrink %d %d", cpus, memMiB))
	f.mu.Unlock()
}
func (f *fakeSandbox) StateDir() string       { return "/run/qemu-shim/fake" }
func (f *fakeSandbox) Done() <-chan struct{}  { return f.done }
func (f *fakeSandbox) ExitStatus() string     { return "killed" }
func (f *fakeSandbox) ConsoleTail(int) []byte { return []byte("console") }
func (f *fakeSandbox) Stop(ctx context.Context) error {
	f.stop.Do(func() { close(f.done) })
	return nil
}
func (f *fakeSandbox) Kill(ctx context.Context) error { return f.Stop(ctx) }

type fakeStream struct {
	taskAPI.TTRPCTaskService
	ctx    context.Context
	events chan *eventsapi.Envelope
	done   chan struct{}
}

func (s *fakeStream) Recv() (*eventsapi.Envelope, error) {
	select {
	case e := <-s.events:
		return e, nil
	case <-s.done:
		return nil, io.EOF
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
}
func (s *fakeStream) CloseSend() error    { return nil }
func (s *fakeStream) SendMsg(m any) error { return nil }
func (s *fakeStream) RecvMsg(m any) error { return nil }

// published is what the service told containerd, in order.
type published struct {
	mu     sync.Mutex
	events []publishedEvent
	added  chan struct{}
}

type publishedEvent struct {
	topic string
	event any
}

func (p *published) Publish(ctx context.Context, topic string, event events.Event) error {
	p.mu.Lock()
	p.events = append(p.events, publishedEvent{topic, event})
	p.mu.Unlock()
	select {
	case p.added <- struct{}{}:
	default:
	}
	return nil
}

func (p *published) Close() error { return nil }

// waitFor waits until an event matching ok has been published, and
// returns it.
func (p *published) waitFor(t *testing.T, what string, ok func(publishedEvent) bool) publishedEvent {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		p.mu.Lock()
		for _, e := range p.events {
			if ok(e) {
				p.mu.Unlock()
				return e
			}
		}
		p.mu.Unlock()
		select {
		case <-p.added:
		case <-time.After(50 * time.Millisecond): // an event published between the check and the wait
		case <-deadline:
			t.Fatalf("no %s published; got %v", what, p.topics())
		}
	}
}

func (p *published) topics() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ts []string
	for _, e := range p.events {
		ts = append(ts, e.topic)
	}
	return ts
}

func exitOf(id string) func(publishedEvent) bool {
	return func(e publishedEvent) bool {
		x, ok := e.event.(*eventstypes.TaskExit)
		return ok && e.topic == runtime.TaskExitEventTopic && x.ContainerID == id
	}
}

type fakeShutdown struct {
	mu        sync.Mutex
	callbacks []func(context.Context) error
	down      bool
}

func (f *fakeShutdown) Shutdown() {
	f.mu.Lock()
	f.down = true
	f.mu.Unlock()
}
func (f *fakeShutdown) RegisterCallback(cb func(context.Context) error) {
	f.callbacks = append(f.callbacks, cb)
}
func (f *fakeShutdown) Done() <-chan struct{} { return nil }
func (f *fakeShutdown) Err() error            { return nil }

type rig struct {
	t   *testing.T
	ctx context.Context
	s   *Service
	sb  *fakeSandbox
	pub *published
	sd  *fakeShutdown
	dir string
}

func newRig(t *testing.T) *rig {
	ctx := namespaces.WithNamespace(context.Background(), "default")
	sb := newFakeSandbox()
	pub := &published{added: make(chan struct{}, 1)}
	sd := &fakeShutdown{}
	s := newService(ctx, pub, sd, func(context.Context, sandbox.Spec) (sandbox.Sandbox, error) { return sb, nil })
	s.timeouts = timeouts{call: 2 * time.Second, create: 2 * time.Second, kill: 200 * time.Millisecond, drain: 5 * time.Second}
	cfg := filepath.Join(t.TempDir(), "config.toml")
	os.WriteFile(cfg, nil, 0o600) // the defaults, whatever this machine's file says
	t.Setenv("QEMU_SHIM_CONFIG", cfg)
	return &rig{t: t, ctx: ctx, s: s, sb: sb, pub: pub, sd: sd, dir: t.TempDir()}
}

// create makes a container whose stdout goes to a file in the bundle.
func (r *rig) create(id string) *taskAPI.CreateTaskResponse {
	return r.createWith(id, nil)
}

// createWith makes one with these annotations.
func (r *rig) createWith(id string, annotations map[string]string) *taskAPI.CreateTaskResponse {
	r.t.Helper()
	bundle := filepath.Join(r.dir, id)
	os.Mkdir(bundle, 0o700)
	spec, _ := json.Marshal(&specs.Spec{Version: specs.Version, Process: &specs.Process{Args: []string{"true"}}, Annotations: annotations})
	os.WriteFile(filepath.Join(bundle, "config.json"), spec, 0o600)
	resp, err := r.s.Create(r.ctx, &taskAPI.CreateTaskRequest{ID: id, Bundle: bundle,
		Stdout: "file://" + filepath.Join(bundle, "stdout")})
	if err != nil {
		r.t.Fatalf("create %s: %v", id, err)
	}
	return resp
}

// State is answered from the calls made through the shim, as the runc
// shim answers it: fakeGuest has no State.
func TestStateIsAnsweredWithoutTheGuest(t *testing.T) {
	r := newRig(t)
	r.create("c1")
	state := func(execID string, want task.Status, wantPid uint32) {
		t.Helper()
		st, err := r.s.State(r.ctx, &taskAPI.StateRequest{ID: "c1", ExecID: execID})
		id := execID
		if id == "" {
			id = "c1"
		}
		if err != nil || st.Status != want || st.Pid != wantPid || st.Bundle != filepath.Join(r.dir, "c1") || st.ID != id {
			t.Errorf("state of %q: %v, %v; want %v, pid %d", execID, st, err, want, wantPid)
		}
	}
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	state("", task.Status_CREATED, 7)
	must(r.s.Start(r.ctx, &taskAPI.StartRequest{ID: "c1"}))
	state("", task.Status_RUNNING, 7)
	must(r.s.Pause(r.ctx, &taskAPI.PauseRequest{ID: "c1"}))
	state("", task.Status_PAUSED, 7)
	must(r.s.Resume(r.ctx, &taskAPI.ResumeRequest{ID: "c1"}))
	state("", task.Status_RUNNING, 7)
	must(r.s.Exec(r.ctx, &taskAPI.ExecProcessRequest{ID: "c1", ExecID: "e1"}))
	state("e1", task.Status_CREATED, 0)
	must(r.s.Start(r.ctx, &taskAPI.StartRequest{ID: "c1", ExecID: "e1"}))
	state("e1", task.Status_RUNNING, 8)
	must(r.s.Pause(r.ctx, &taskAPI.PauseRequest{ID: "c1"}))
	state("e1", task.Status_PAUSED, 8)
	must(r.s.Resume(r.ctx, &taskAPI.ResumeRequest{ID: "c1"}))
	state("e1", task.Status_RUNNING, 8)
	r.sb.send(runtime.TaskExitEventTopic, &eventstypes.TaskExit{ContainerID: "c1", ID: "e1", Pid: 8, ExitStatus: 2})
	r.pub.waitFor(t, "the exec's exit", func(e publishedEvent) bool {
		x, ok := e.event.(*eventstypes.TaskExit)
		return ok && x.ID == "e1"
	})
	state("e1", task.Status_STOPPED, 8)
	state("", task.Status_RUNNING, 7)
}

func TestLifecycleAsContainerdSeesIt(t *testing.T) {
	r := newRig(t)
	if resp := r.create("c1"); resp.Pid != 7 {
		t.Fatalf("create: pid %d", resp.Pid)
	}
	// containerd hears of the container with the host's bundle, not the
	// guest's, and not the guest's stream names.
	ev := r.pub.waitFor(t, "TaskCreate", func(e publishedEvent) bool { return e.topic == runtime.TaskCreateEventTopic })
	if c := ev.event.(*eventstypes.TaskCreate); c.Bundle != filepath.Join(r.dir, "c1") || c.IO.GetStdout() != "file://"+filepath.Join(r.dir, "c1", "stdout") {
		t.Errorf("TaskCreate: bundle %q, IO %v", c.Bundle, c.IO)
	}
	if _, err := r.s.Start(r.ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	// The guest's process writes, closes its output, and exits 3: Wait
	// returns after the output is in the host's file.
	out := r.sb.guestEnd(t, "s1-o")
	go func() {
		out.Write([]byte("hello\n"))
		out.Close()
	}()
	r.sb.guestEnd(t, "s1-e").Close()
	r.sb.send(runtime.TaskExitEventTopic, &eventstypes.TaskExit{ContainerID: "c1", ID: "c1", Pid: 7, ExitStatus: 3})
	w, err := r.s.Wait(r.ctx, &taskAPI.WaitRequest{ID: "c1"})
	if err != nil || w.ExitStatus != 3 {
		t.Fatalf("wait: %v, %v", w, err)
	}
	if b, _ := os.ReadFile(filepath.Join(r.dir, "c1", "stdout")); string(b) != "hello\n" {
		t.Errorf("stdout %q", b)
	}
	// Once the exit is known, State (which containerd asks before each
	// delete) is answered here: fakeGuest has no State.
	if st, err := r.s.State(r.ctx, &taskAPI.StateRequest{ID: "c1"}); err != nil || st.Status != task.Status_STOPPED || st.ExitStatus != 3 || st.Pid != 7 {
		t.Errorf("state after the exit: %v, %v; want stopped, exit 3, pid 7", st, err)
	}
	// The VM's only container, exited: its VM ends with it, and the
	// guest is not asked to clean up. The delete reports the exit.
	d, err := r.s.Delete(r.ctx, &taskAPI.DeleteRequest{ID: "c1"})
	if err != nil || d.ExitStatus != 3 || d.Pid != 7 {
		t.Fatalf("delete: %v, %v; want exit 3, pid 7", d, err)
	}
	if n := r.sb.guest.deletes.Load(); n != 0 {
		t.Errorf("the guest was asked to delete %d times, want none", n)
	}
	del := r.pub.waitFor(t, "TaskDelete", func(e publishedEvent) bool { return e.topic == runtime.TaskDeleteEventTopic })
	if e := del.event.(*eventstypes.TaskDelete); e.ExitStatus != 3 || e.Pid != 7 {
		t.Errorf("TaskDelete %v: want exit 3, pid 7", e)
	}
	if last, ok := r.sb.released["c1"]; !ok || !last {
		t.Errorf("delete released %v", r.sb.released)
	}
	if _, err := r.s.State(r.ctx, &taskAPI.StateRequest{ID: "c1"}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("state after delete: %v, want not found", err)
	}
	r.s.Shutdown(r.ctx, &taskAPI.ShutdownRequest{})
	if !r.sd.down || !ended(r.sb) {
		t.Errorf("shutdown with no container left: shim down %v, VM ended %v", r.sd.down, ended(r.sb))
	}
}

// One container's output that never drains does not hold up another's
// exit: each waits for its own.
func TestOneSlowDrainDelaysNoOtherExit(t *testing.T) {
	r := newRig(t)
	r.create("slow")
	r.create("quick")
	for _, id := range []string{"slow", "quick"} {
		if _, err := r.s.Start(r.ctx, &taskAPI.StartRequest{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	// slow's output stays open (a child holds it); quick's closes.
	r.sb.send(runtime.TaskExitEventTopic, &eventstypes.TaskExit{ContainerID: "slow", ID: "slow", ExitStatus: 0})
	r.sb.guestEnd(t, "s2-o").Close()
	r.sb.guestEnd(t, "s2-e").Close()
	r.sb.send(runtime.TaskExitEventTopic, &eventstypes.TaskExit{ContainerID: "quick", ID: "quick", ExitStatus: 0})
	r.pub.waitFor(t, "quick's exit", exitOf("quick"))
	r.pub.mu.Lock()
	for _, e := range r.pub.events {
		if exitOf("slow")(e) {
			t.Errorf("slow's exit published before its output drained")
		}
	}
	r.pub.mu.Unlock()
	r.sb.guestEnd(t, "s1-o").Close()
	r.sb.guestEnd(t, "s1-e").Close()
	r.pub.waitFor(t, "slow's exit", exitOf("slow"))
}

// When the VM ends, its processes are reported killed, once each; the
// calls then answer as the runc shim's do for stopped processes, and
// Delete succeeds.
func TestVMEndReportsEveryProcessKilled(t *testing.T) {
	r := newRig(t)
	r.create("c1")
	if _, err := r.s.Start(r.ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.s.Exec(r.ctx, &taskAPI.ExecProcessRequest{ID: "c1", ExecID: "never-started"}); err != nil {
		t.Fatal(err)
	}
	r.sb.Stop(r.ctx) // QEMU killed
	ev := r.pub.waitFor(t, "init's exit", exitOf("c1"))
	if x := ev.event.(*eventstypes.TaskExit); x.ExitStatus != 137 || x.ID != "c1" {
		t.Errorf("exit %+v, want 137 for the init", x)
	}
	st, err := r.s.State(r.ctx, &taskAPI.StateRequest{ID: "c1"})
	if err != nil || st.Status != task.Status_STOPPED || st.ExitStatus != 137 {
		t.Errorf("state: %v, %v; want stopped, 137", st, err)
	}
	if _, err := r.s.Kill(r.ctx, &taskAPI.KillRequest{ID: "c1", Signal: uint32(syscall.SIGKILL)}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("kill after the VM ended: %v, want not found", err)
	}
	if p, err := r.s.Pids(r.ctx, &taskAPI.PidsRequest{ID: "c1"}); err != nil || len(p.Processes) != 0 {
		t.Errorf("pids: %v, %v", p, err)
	}
	if _, err := r.s.Delete(r.ctx, &taskAPI.DeleteRequest{ID: "c1", ExecID: "never-started"}); err != nil {
		t.Errorf("delete the exec: %v", err)
	}
	d, err := r.s.Delete(r.ctx, &taskAPI.DeleteRequest{ID: "c1"})
	if err != nil || d.ExitStatus != 137 {
		t.Errorf("delete: %v, %v", d, err)
	}
	n := 0
	for _, topic := range r.pub.topics() {
		if topic == runtime.TaskExitEventTopic {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d exit events (%v), want the init's only: the exec never started", n, r.pub.topics())
	}
}

// A SIGKILL the guest does not answer ends the VM when it is for the
// VM's last container, and the container is reported killed.
func TestUnansweredKillEndsTheVM(t *testing.T) {
	r := newRig(t)
	r.create("c1")
	if _, err := r.s.Start(r.ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	r.sb.guest.hangKill = true
	if _, err := r.s.Kill(r.ctx, &taskAPI.KillRequest{ID: "c1", Signal: uint32(syscall.SIGTERM)}); err == nil {
		t.Errorf("unanswered SIGTERM: no error")
	}
	if ended(r.sb) {
		t.Fatalf("an unanswered SIGTERM ended the VM")
	}
	if _, err := r.s.Kill(r.ctx, &taskAPI.KillRequest{ID: "c1", Signal: uint32(syscall.SIGKILL)}); err != nil {
		t.Fatalf("unanswered SIGKILL: %v", err)
	}
	if !ended(r.sb) {
		t.Fatalf("the VM still runs")
	}
	w, err := r.s.Wait(r.ctx, &taskAPI.WaitRequest{ID: "c1"})
	if err != nil || w.ExitStatus != 137 {
		t.Errorf("wait: %v, %v", w, err)
	}
	if _, err := r.s.Delete(r.ctx, &taskAPI.DeleteRequest{ID: "c1"}); err != nil {
		t.Errorf("delete: %v", err)
	}
}

// A failed create leaves nothing: the container is unknown, what the VM
// held for it is released, the VM it booted is ended, and the shim shuts
// down when told to.
func TestFailedCreateLeavesNothing(t *testing.T) {
	r := newRig(t)
	bundle := filepath.Join(r.dir, "refused")
	os.Mkdir(bundle, 0o700)
	spec, _ := json.Marshal(&specs.Spec{Version: specs.Version, Process: &specs.Process{Args: []string{"true"}}})
	os.WriteFile(filepath.Join(bundle, "config.json"), spec, 0o600)
	_, err := r.s.Create(r.ctx, &taskAPI.CreateTaskRequest{ID: "refused", Bundle: bundle})
	if !errdefs.IsFailedPrecondition(errgrpc.ToNative(err)) {
		t.Fatalf("create: %v, want the guest's failed precondition", err)
	}
	if _, ok := r.sb.released["refused"]; !ok {
		t.Errorf("nothing released")
	}
	if !ended(r.sb) {
		t.Errorf("the VM it booted still runs")
	}
	if _, err := os.Stat(filepath.Join(bundle, "qemu-shim-vm")); !os.IsNotExist(err) {
		t.Errorf("VM dir file left: %v", err)
	}
	r.s.Shutdown(r.ctx, &taskAPI.ShutdownRequest{})
	if !r.sd.down {
		t.Errorf("the shim stays up with no container")
	}
}

// An Update that lowers a container's CPU quota gives the vCPUs back, after
// the guest's cgroup took the new limits; one that raises it grows first.
func TestUpdateGrowsThenShrinksVCPUs(t *testing.T) {
	r := newRig(t)
	r.create("c1")
	update := func(cpus int64) {
		t.Helper()
		period := uint64(100000)
		quota := cpus * 100000
		res, _ := json.Marshal(&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: &quota, Period: &period}})
		if _, err := r.s.Update(r.ctx, &taskAPI.UpdateTaskRequest{ID: "c1", Resources: &anypb.Any{Value: res}}); err != nil {
			t.Fatal(err)
		}
	}
	r.sb.mu.Lock()
	r.sb.sizes = nil
	r.sb.mu.Unlock()
	update(3)
	update(1)
	r.sb.mu.Lock()
	defer r.sb.mu.Unlock()
	// Never below the configured vm.cpus (2).
	want := []string{"grow 3 256", "shrink 3 256", "grow 2 256", "shrink 2 256"}
	if !slices.Equal(r.sb.sizes, want) {
		t.Errorf("sizes %q, want %q", r.sb.sizes, want)
	}
}

// Deleting right after the VM ended reports the kill, never a clean exit,
// and containerd hears of the exits (execs first, the init last) and then
// of the delete.
func TestDeleteRightAfterVMEndReportsTheKill(t *testing.T) {
	r := newRig(t)
	r.create("c1")
	if _, err := r.s.Start(r.ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.s.Exec(r.ctx, &taskAPI.ExecProcessRequest{ID: "c1", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.s.Start(r.ctx, &taskAPI.StartRequest{ID: "c1", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	r.sb.Stop(r.ctx)
	d, err := r.s.Delete(r.ctx, &taskAPI.DeleteRequest{ID: "c1"})
	if err != nil || d.ExitStatus != 137 {
		t.Fatalf("delete right after the VM ended: %v, %v; want 137", d, err)
	}
	r.pub.waitFor(t, "TaskDelete", func(e publishedEvent) bool { return e.topic == runtime.TaskDeleteEventTopic })
	var order []string
	for _, e := range r.pub.topics() {
		if e == runtime.TaskExitEventTopic || e == runtime.TaskDeleteEventTopic {
			order = append(order, e)
		}
	}
	r.pub.mu.Lock()
	var exits []string
	for _, e := range r.pub.events {
		if x, ok := e.event.(*eventstypes.TaskExit); ok {
			exits = append(exits, x.ID)
		}
	}
	r.pub.mu.Unlock()
	if len(order) != 3 || order[2] != runtime.TaskDeleteEventTopic || len(exits) != 2 || exits[0] != "e1" || exits[1] != "c1" {
		t.Errorf("events %v, exits %v: want e1's exit, c1's exit, then the delete", order, exits)
	}
}

// A group's VM may get another container after its last one is deleted:
// the guest is asked to delete each, so that the next finds it clean.
func TestGroupDeleteAsksTheGuest(t *testing.T) {
	r := newRig(t)
	r.createWith("c1", map[string]string{config.AnnotationGroup: "g1"})
	if _, err := r.s.Start(r.ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	r.sb.guestEnd(t, "s1-o").Close()
	r.sb.guestEnd(t, "s1-e").Close()
	r.sb.send(runtime.TaskExitEventTopic, &eventstypes.TaskExit{ContainerID: "c1", ID: "c1", Pid: 7, ExitStatus: 3})
	if w, err := r.s.Wait(r.ctx, &taskAPI.WaitRequest{ID: "c1"}); err != nil || w.ExitStatus != 3 {
		t.Fatalf("wait: %v, %v", w, err)
	}
	if _, err := r.s.Delete(r.ctx, &taskAPI.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if n := r.sb.guest.deletes.Load(); n != 1 {
		t.Errorf("the guest was asked to delete %d times, want once", n)
	}
}
