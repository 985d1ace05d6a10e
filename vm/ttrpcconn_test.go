package vm

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/types/known/emptypb"

	agentapi "github.com/qemu-shim/qemu-shim/api/agent/v1"
	"github.com/qemu-shim/qemu-shim/internal/transport/conn"
)

const pingService = "qemushim.test.v1.Ping"

// fakeGuest is a transport.Host whose every connection reaches a TTRPC
// server with a Ping method, as the guest's task service would.
type fakeGuest struct {
	t      *testing.T
	server *ttrpc.Server
	conns  chan net.Conn

	mu      sync.Mutex
	dials   int
	peers   []net.Conn // the guest's ends, in dial order
	dialErr error
}

func newFakeGuest(t *testing.T) *fakeGuest {
	s, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	s.RegisterService(pingService, &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
		"Ping": func(_ context.Context, unmarshal func(any) error) (any, error) {
			var req emptypb.Empty
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			return &emptypb.Empty{}, nil
		},
	}})
	agentapi.RegisterAgentService(s, &fakeAgent{cpus: 3})
	g := &fakeGuest{t: t, server: s, conns: make(chan net.Conn)}
	l := &chanListener{conns: g.conns, done: make(chan struct{})}
	go s.Serve(context.Background(), l)
	t.Cleanup(func() {
		s.Close()
		l.Close()
	})
	return g
}

func (g *fakeGuest) Dial(ctx context.Context) (net.Conn, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.dialErr != nil {
		return nil, g.dialErr
	}
	g.dials++
	host, guest := net.Pipe()
	g.peers = append(g.peers, guest)
	go func() {
		kind, _, err := conn.ReadHeader(guest)
		if err != nil || kind != conn.KindTask && kind != conn.KindTTRPC {
			g.t.Errorf("connection header: kind %d, %v", kind, err)
			guest.Close()
			return
		}
		g.conns <- guest
	}()
	return host, nil
}

func (g *fakeGuest) Close() error { return nil }

// drop closes the guest's end of the newest connection.
func (g *fakeGuest) drop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.peers[len(g.peers)-1].Close()
}

func (g *fakeGuest) dialCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.dials
}

type chanListener struct {
	conns    chan net.Conn
	done     chan struct{}
	doneOnce sync.Once
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.doneOnce.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.UnixAddr{Name: "fake", Net: "unix"} }

// runningInstance is an Instance in state Running on a fake guest.
func runningInstance(t *testing.T, g *fakeGuest) *Instance {
	i := &Instance{cfg: Config{ID: "t"}, host: g, cleanupDone: make(chan struct{}), stopping: make(chan struct{}),
		tasks:     redialer{kind: conn.KindTask, what: "task service"},
		agentConn: redialer{kind: conn.KindTTRPC, what: "agent"}}
	i.agent = agentProxy{i}
	if err := i.state.transition("t", "start", StateNew, StateStarting); err != nil {
		t.Fatal(err)
	}
	if err := i.state.transition("t", "finish start", StateStarting, StateRunning); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(i.closeTaskClient)
	t.Cleanup(i.agentConn.close)
	return i
}

func ping(ctx context.Context, c *ttrpc.Client) error {
	return c.Call(ctx, pingService, "Ping", &emptypb.Empty{}, &emptypb.Empty{})
}

func TestTaskClientRedialsAfterTheGuestDropsIt(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g := newFakeGuest(t)
	i := runningInstance(t, g)

	first, err := i.TaskClient(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ping(ctx, first); err != nil {
		t.Fatal(err)
	}
	again, err := i.TaskClient(ctx)
	if err != nil || again != first {
		t.Fatalf("a live connection was not reused: %p, %p, %v", first, again, err)
	}
	if n := g.dialCount(); n != 1 {
		t.Fatalf("%d dials for one live connection", n)
	}

	g.drop()
	if err := first.UserOnCloseWait(ctx); err != nil {
		t.Fatalf("the client never noticed its connection ended: %v", err)
	}
	if err := ping(ctx, first); !errors.Is(err, ttrpc.ErrClosed) {
		t.Errorf("a call on the dropped client: %v, want ttrpc.ErrClosed", err)
	}

	// Many callers at once: one redial, one new client for all.
	const callers = 8
	clients := make(chan *ttrpc.Client, callers)
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := i.TaskClient(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			clients <- c
		}()
	}
	wg.Wait()
	close(clients)
	var second *ttrpc.Client
	for c := range clients {
		if second == nil {
			second = c
		}
		if c != second {
			t.Error("callers got different clients")
		}
	}
	if second == first {
		t.Fatal("the dead client was handed out again")
	}
	if n := g.dialCount(); n != 2 {
		t.Errorf("%d dials, want 2 (one redial)", n)
	}
	if err := ping(ctx, second); err != nil {
		t.Errorf("the new client: %v", err)
	}
}

func TestTaskClientUnavailable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("dial fails", func(t *testing.T) {
		g := newFakeGuest(t)
		g.dialErr = errors.New("session closed")
		i := runningInstance(t, g)
		if _, err := i.TaskClient(ctx); !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("got %v, want ErrUnavailable", err)
		}
	})

	t.Run("QEMU exited", func(t *testing.T) {
		g := newFakeGuest(t)
		i := runningInstance(t, g)
		i.proc = &process{exited: make(chan struct{}), stderr: &tailBuffer{max: 64}}
		close(i.proc.exited)
		if _, err := i.TaskClient(ctx); !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("got %v, want ErrUnavailable", err)
		}
		if n := g.dialCount(); n != 0 {
			t.Errorf("dialled a guest whose QEMU exited")
		}
	})

	t.Run("shut down", func(t *testing.T) {
		g := newFakeGuest(t)
		i := runningInstance(t, g)
		c, err := i.TaskClient(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := i.state.transition("t", "shut down", StateRunning, StateShutdown); err != nil {
			t.Fatal(err)
		}
		i.closeTaskClient()
		if _, err := i.TaskClient(ctx); !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("got %v, want ErrUnavailable", err)
		}
		if err := ping(ctx, c); !errors.Is(err, ttrpc.ErrClosed) {
			t.Errorf("the old client after shutdown: %v, want ttrpc.ErrClosed", err)
		}
	})

	t.Run("not started", func(t *testing.T) {
		i := &Instance{cfg: Config{ID: "t"}}
		if _, err := i.TaskClient(ctx); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("got %v, want ErrFailedPrecondition", err)
		}
	})
}

func TestAgentRedialsAfterTheGuestDropsIt(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g := newFakeGuest(t)
	i := runningInstance(t, g)
	info, err := i.Info(ctx)
	if err != nil || info.CpusOnline != 3 {
		t.Fatalf("info %v, %v", info, err)
	}
	first := i.Client()
	g.drop()
	if err := first.UserOnCloseWait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := i.Info(ctx); err != nil {
		t.Fatalf("after the guest dropped the connection: %v", err)
	}
	if i.Client() == first || g.dialCount() != 2 {
		t.Errorf("no redial: %d dials", g.dialCount())
	}

	// Shutting down, a live connection still serves (the agent is asked
	// to power off), but a dead one is not dialled again.
	if err := i.state.transition("t", "shut down", StateRunning, StateShutdown); err != nil {
		t.Fatal(err)
	}
	if _, err := i.Agent().Info(ctx, &agentapi.InfoRequest{}); err != nil {
		t.Errorf("the live connection while shutting down: %v", err)
	}
	g.drop()
	if err := i.Client().UserOnCloseWait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := i.Agent().Info(ctx, &agentapi.InfoRequest{}); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("after shutdown: %v, want ErrUnavailable", err)
	}
	if g.dialCount() != 2 {
		t.Errorf("dialled a VM that is shut down")
	}
}
