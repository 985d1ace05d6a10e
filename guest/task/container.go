package task

import (
	"context"
	"os"
	"sync"

	"github.com/containerd/cgroups/v3/cgroup2"
	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/log"
)

// container is one OCI container in the guest.
type container struct {
	id, bundle string
	// runtime names the OCI runtime the container runs under.
	runtime string
	// mounts are the rootfs mounts, innermost last.
	mounts []string
	init   *process

	mu     sync.Mutex
	execs  map[string]*process
	paused bool

	cgroup    *cgroup2.Manager
	stopWatch context.CancelFunc
}

func (c *container) isPaused() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.paused
}

func (c *container) exec(id string) (*process, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.execs[id]
	return p, ok
}

func (c *container) runningExecs() []*process {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*process
	for _, p := range c.execs {
		if p.getState() == procRunning {
			out = append(out, p)
		}
	}
	return out
}

// watchOOM publishes a TaskOOM each time the kernel's oom_kill count of
// the container's cgroup goes up. runc's own events report one OOM
// several times; the counter does not.
func (c *container) watchOOM(ctx context.Context, publish func(topic string, event any)) {
	if c.cgroup == nil {
		return
	}
	ctx, c.stopWatch = context.WithCancel(ctx)
	events, errs := c.cgroup.EventChan()
	go func() {
		var seen uint64
		for {
			select {
			case e, ok := <-events:
				if !ok {
					return
				}
				if e.OOMKill > seen {
					seen = e.OOMKill
					publish(topicOOM, &eventstypes.TaskOOM{ContainerID: c.id})
				}
			case err, ok := <-errs:
				if ok && err != nil && ctx.Err() == nil {
					log.G(ctx).WithError(err).WithField("container", c.id).Debug("OOM watch ended")
				}
				return
			case <-ctx.Done():
				return
			}
		}
	}()
}

// remove undoes everything Create made, ignoring what is already gone.
func (c *container) remove(ctx context.Context) error {
	if c.stopWatch != nil {
		c.stopWatch()
	}
	err := unmountAll(c.mounts)
	if err == nil {
		os.RemoveAll(c.bundle)
	} else {
		log.G(ctx).WithError(err).WithField("container", c.id).Warn("rootfs still mounted: bundle kept")
	}
	if c.cgroup != nil {
		c.cgroup.Delete()
	}
	return err
}
