package integration

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/qemu-shim/qemu-shim/vm"
	"github.com/qemu-shim/qemu-shim/vm/qmp"
)

// TestCPUGrowShrinkGrow grows a VM from 1 to 3 vCPUs, shrinks it back to 1
// and grows it to 2 and then 4. Where vm.CPUEject allows it, the shrink
// ejects the two hot-plugged vCPUs (DEVICE_DELETED) and the next grow
// plugs core 1 again; under TCG the guest offlines them instead, they stay
// plugged, and growing onlines them again before plugging core 3.
func TestCPUGrowShrinkGrow(t *testing.T) {
	t.Parallel()
	inst := bootVM(t, nil)
	ctx := testContext(t)
	eject, why := vm.CPUEject(inst.Accel())
	t.Logf("accel %s: %s", inst.Accel(), why)

	// The operator's monitor sees the same events as the shim's.
	mon, err := qmp.Connect(ctx, filepath.Join(inst.StateDir(), vm.OperatorQMPSocketName))
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	events, unsubscribe := mon.Subscribe()
	defer unsubscribe()
	var (
		mu      sync.Mutex
		deleted []string
	)
	go func() {
		for e := range events {
			if e.Name == "DEVICE_DELETED" {
				p, _ := e.Data["path"].(string)
				mu.Lock()
				deleted = append(deleted, p)
				mu.Unlock()
			}
		}
	}()

	online := func(want int) {
		t.Helper()
		info, err := inst.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if int(info.CpusOnline) != want {
			t.Fatalf("%d vCPUs online in the guest, want %d", info.CpusOnline, want)
		}
	}
	plugged := func(want ...int) {
		t.Helper()
		var slots []struct {
			QOMPath string `json:"qom-path"`
			Props   struct {
				CoreID int `json:"core-id"`
			} `json:"props"`
		}
		if err := mon.Run(ctx, "query-hotpluggable-cpus", nil, &slots); err != nil {
			t.Fatal(err)
		}
		var cores []int
		for _, s := range slots {
			if s.QOMPath != "" {
				cores = append(cores, s.Props.CoreID)
			}
		}
		slices.Sort(cores)
		if !slices.Equal(cores, want) {
			t.Fatalf("cores %v plugged, want %v", cores, want)
		}
	}
	set := func(from, to int) {
		t.Helper()
		start := time.Now()
		if err := inst.SetCPUs(ctx, to); err != nil {
			select {
			case <-inst.Done():
				t.Fatalf("%v (QEMU ended: %s)", err, inst.ExitStatus())
			default:
				t.Fatal(err)
			}
		}
		t.Logf("%d→%d vCPUs in %v", from, to, time.Since(start))
		online(to)
	}

	set(1, 3)
	plugged(0, 1, 2)

	set(3, 1)
	if eject {
		plugged(0)
		// Events are handed out before the reply to a command that
		// followed them: SetCPUs's own queries came after both.
		mu.Lock()
		for _, core := range []string{"1", "2"} {
			prefix := "/machine/peripheral/cpu-" + core + "-"
			if !slices.ContainsFunc(deleted, func(p string) bool { return strings.HasPrefix(p, prefix) }) {
				t.Errorf("no DEVICE_DELETED for core %s (got %v)", core, deleted)
			}
		}
		mu.Unlock()
	} else {
		plugged(0, 1, 2)
	}

	set(1, 2)
	if eject {
		plugged(0, 1)
	} else {
		plugged(0, 1, 2)
	}

	set(2, 4)
	plugged(0, 1, 2, 3)

	if err := inst.SetCPUs(ctx, 0); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("below the boot vCPUs: got %v", err)
	}
}
