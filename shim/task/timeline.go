package task

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/log"
)

// timeline records how long the steps of one call took, for a debug line
// that says where a slow start went.
type timeline struct {
	begin, last time.Time
	steps       []string
}

func newTimeline() *timeline {
	now := time.Now()
	return &timeline{begin: now, last: now}
}

func (t *timeline) step(name string) {
	now := time.Now()
	t.steps = append(t.steps, fmt.Sprintf("%s=%.3fs", name, now.Sub(t.last).Seconds()))
	t.last = now
}

func (t *timeline) log(ctx context.Context, what string) {
	if log.GetLevel() < log.DebugLevel {
		return
	}
	log.G(ctx).WithField("steps", strings.Join(t.steps, " ")).WithField("took", time.Since(t.begin)).Debug(what)
}
