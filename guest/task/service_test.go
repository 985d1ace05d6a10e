package task

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/qemu-shim/qemu-shim/api/wire"
)

// TestACreateUnderWayIsNotFoundByOtherCalls: while a create waits for its
// disks, the container's id is taken, but the other calls find no
// container (rather than one without an init process) until the create
// has got that far.
func TestACreateUnderWayIsNotFoundByOtherCalls(t *testing.T) {
	dir := t.TempDir()
	runc := filepath.Join(dir, "runc") // never run: the create stops before
	if err := os.WriteFile(runc, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	s := New(context.Background(), Config{Root: filepath.Join(dir, "containers"), SysfsRoot: filepath.Join(dir, "sys"),
		DefaultRuntime: wire.RuntimeRunc, Runtimes: map[string]string{wire.RuntimeRunc: runc}, Events: NewEventLog(0)})
	spec, err := json.Marshal(&specs.Spec{Version: "1.0.2", Process: &specs.Process{Args: []string{"true"}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	created := make(chan error, 1)
	go func() {
		_, err := s.Create(ctx, &taskAPI.CreateTaskRequest{
			ID:      "c1",
			Options: &anypb.Any{TypeUrl: wire.SpecTypeURL, Value: spec},
			// A disk that never comes: the create waits for it.
			Rootfs: []*types.Mount{{Type: "erofs", Source: wire.SerialPrefix + "never"}},
		})
		created <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		_, reserved := s.containers["c1"]
		s.mu.Unlock()
		if reserved {
			break
		}
		select {
		case err := <-created:
			t.Fatalf("the create ended before it waited for its disk: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the create never reserved its id")
		}
		time.Sleep(time.Millisecond)
	}

	if _, err := s.State(context.Background(), &taskAPI.StateRequest{ID: "c1"}); !errdefs.IsNotFound(err) {
		t.Errorf("State: %v, want not found", err)
	}
	if _, err := s.Kill(context.Background(), &taskAPI.KillRequest{ID: "c1", Signal: 9}); !errdefs.IsNotFound(err) {
		t.Errorf("Kill: %v, want not found", err)
	}
	if _, err := s.Start(context.Background(), &taskAPI.StartRequest{ID: "c1"}); !errdefs.IsNotFound(err) {
		t.Errorf("Start: %v, want not found", err)
	}
	if resp, err := s.Connect(context.Background(), &taskAPI.ConnectRequest{ID: "c1"}); err != nil || resp.TaskPid != 0 {
		t.Errorf("Connect: %v, %v; want no task pid", resp, err)
	}
	// A second create of the id is refused while the first is under way.
	if _, err := s.Create(context.Background(), &taskAPI.CreateTaskRequest{ID: "c1", Options: &anypb.Any{TypeUrl: wire.SpecTypeURL, Value: spec}}); !errdefs.IsAlreadyExists(err) {
		t.Errorf("second create: %v, want already exists", err)
	}

	cancel()
	select {
	case err := <-created:
		if err == nil {
			t.Fatal("the create succeeded without its disk")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the create did not end with its context")
	}
	if _, err := s.State(context.Background(), &taskAPI.StateRequest{ID: "c1"}); !errdefs.IsNotFound(err) {
		t.Errorf("State after the failed create: %v, want not found", err)
	}
}
