// Package hooks runs a spec's OCI hooks on the host, as runc runs those the
// runtime spec places in the runtime's namespace (prestart, createRuntime,
// poststart, poststop): each hook gets the container's state as JSON on
// its standard input, its own arguments and environment, and its timeout.
// The container's process lives in the VM, so the state's pid is a host
// process standing in for it in the container's host-side network
// namespace (see package netns).
package hooks

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// maxOutput bounds what a failed hook's output adds to its error.
const maxOutput = 4096

// HostHooks is how many of the spec's hooks run on the host.
func HostHooks(h *specs.Hooks) int {
	if h == nil {
		return 0
	}
	return len(h.Prestart) + len(h.CreateRuntime) + len(h.Poststart) + len(h.Poststop) //nolint:staticcheck // prestart is deprecated, still used
}

// Run runs the hooks in order; the first failure stops them and is
// returned with the hook's path and output. kind names them in errors.
func Run(ctx context.Context, kind string, hooks []specs.Hook, state specs.State) error {
	if len(hooks) == 0 {
		return nil
	}
	in, err := json.Marshal(state)
	if err != nil {
		return err
	}
	for i, h := range hooks {
		if err := run(ctx, h, in); err != nil {
			return fmt.Errorf("%s hook %d (%s): %w", kind, i, h.Path, err)
		}
	}
	return nil
}

func run(ctx context.Context, h specs.Hook, state []byte) error {
	if h.Path == "" || !strings.HasPrefix(h.Path, "/") {
		return fmt.Errorf("path %q is not absolute: %w", h.Path, errdefs.ErrInvalidArgument)
	}
	if h.Timeout != nil {
		if *h.Timeout <= 0 {
			return fmt.Errorf("timeout %d: want a positive number of seconds: %w", *h.Timeout, errdefs.ErrInvalidArgument)
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(*h.Timeout)*time.Second)
		defer cancel()
	}
	args := h.Args
	if len(args) == 0 {
		args = []string{h.Path}
	}
	cmd := exec.CommandContext(ctx, h.Path)
	cmd.Args = args
	cmd.Env = h.Env
	cmd.Stdin = bytes.NewReader(state)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &limited{&out}, &limited{&out}
	if err := cmd.Run(); err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			return fmt.Errorf("timed out after %ds: %w", *h.Timeout, context.DeadlineExceeded)
		}
		return fmt.Errorf("%v: %s", err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

// limited keeps the first maxOutput bytes written to it.
type limited struct{ b *bytes.Buffer }

func (l *limited) Write(p []byte) (int, error) {
	if room := maxOutput - l.b.Len(); room > 0 {
		l.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
