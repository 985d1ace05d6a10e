package agent

import (
	"sync"
	"time"

	"github.com/containerd/log"

	"golang.org/x/sys/unix"

	api "github.com/qemu-shim/qemu-shim/api/agent/v1"
)

// Timeline records when each boot step finished, in guest uptime
// (CLOCK_BOOTTIME). Its zero value is ready; it is safe for concurrent use.
type Timeline struct {
	mu    sync.Mutex
	steps []*api.BootStep
}

// Step records that the step name finished now, and logs it at debug
// level.
func (t *Timeline) Step(name string) {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	t.mu.Lock()
	t.steps = append(t.steps, &api.BootStep{Name: name, AtNs: uint64(ts.Nano())})
	t.mu.Unlock()
	log.L.WithField("at", time.Duration(ts.Nano())).Debug("boot step " + name)
}

// Steps returns a copy of the steps so far, in order.
func (t *Timeline) Steps() []*api.BootStep {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]*api.BootStep(nil), t.steps...)
}
