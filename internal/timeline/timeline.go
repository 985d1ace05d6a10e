// Package timeline records how long the steps of one call took, for a
// debug line that says where a slow start went.
package timeline

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/log"
)

// Timeline is the steps of one call so far.
type Timeline struct {
	begin, last time.Time
	steps       []string
}

// New starts a timeline now.
func New() *Timeline {
	now := time.Now()
	return &Timeline{begin: now, last: now}
}

// Step ends the step called name.
func (t *Timeline) Step(name string) {
	now := time.Now()
	t.steps = append(t.steps, fmt.Sprintf("%s=%.3fs", name, now.Sub(t.last).Seconds()))
	t.last = now
}

// Log writes the steps, at debug level, in a line whose message is what.
func (t *Timeline) Log(ctx context.Context, what string) {
	if log.GetLevel() < log.DebugLevel {
		return
	}
	log.G(ctx).WithField("steps", strings.Join(t.steps, " ")).WithField("took", time.Since(t.begin)).Debug(what)
}
