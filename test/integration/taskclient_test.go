package integration

import (
	"errors"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
)

// TaskClient hands out a working client after the task connection ended,
// and a clear error once the VM is gone; the agent's connection is made
// again the same way. (The connection is ended from the
// host here: the guest has no way to be told to drop it.)
func TestTaskRedial(t *testing.T) {
	t.Parallel()
	inst := bootVM(t, nil)
	ctx := testContext(t)
	roundTrip := func(c *ttrpc.Client) error {
		_, err := taskAPI.NewTTRPCTaskClient(c).State(ctx, &taskAPI.StateRequest{ID: "missing"})
		if errors.Is(errgrpc.ToNative(err), errdefs.ErrNotFound) {
			return nil // the task service answered
		}
		return err
	}
	first, err := inst.TaskClient(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(first); err != nil {
		t.Fatal(err)
	}
	first.Close()
	if err := first.UserOnCloseWait(ctx); err != nil {
		t.Fatal(err)
	}
	second, err := inst.TaskClient(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if second == first {
		t.Fatal("the closed client was handed out again")
	}
	if err := roundTrip(second); err != nil {
		t.Fatalf("the new connection: %v", err)
	}
	// The agent's connection too.
	agent := inst.Client()
	agent.Close()
	if err := agent.UserOnCloseWait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := inst.Info(ctx); err != nil {
		t.Fatalf("the agent after its connection ended: %v", err)
	}
	if err := inst.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := inst.TaskClient(ctx); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("after shutdown: %v, want ErrUnavailable", err)
	}
	if err := roundTrip(second); !errors.Is(err, ttrpc.ErrClosed) {
		t.Errorf("the last client after shutdown: %v, want ttrpc.ErrClosed", err)
	}
}
