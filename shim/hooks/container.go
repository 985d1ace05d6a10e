package hooks

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/qemu-shim/qemu-shim/shim/bundle"
	"github.com/qemu-shim/qemu-shim/shim/netns"
)

// Container is what a container's OCI hooks need on the host.
type Container struct {
	hooks *specs.Hooks
	// netns holds the container's host-side network namespace; nil when
	// the spec has none (the hooks then get the shim's pid).
	netns *netns.Namespace
	state specs.State
}

// RunCreate runs the prestart and createRuntime hooks on the host, as
// runc does during create, with a state whose pid is a host process in the
// container's host-side network namespace (made here if the spec asks for
// a new one); path is the host-side namespace the spec joins (see
// resolveNetns). It returns the namespace's path for the wiring, "" if
// none.
func RunCreate(ctx context.Context, id, dir string, spec *specs.Spec, path string) (*Container, string, error) {
	if HostHooks(spec.Hooks) == 0 {
		return nil, path, nil
	}
	h := &Container{hooks: spec.Hooks, state: specs.State{
		Version: specs.Version, ID: id, Status: specs.StateCreating, Bundle: dir, Annotations: spec.Annotations,
		Pid: os.Getpid(),
	}}
	if hasNetworkNamespace(spec) {
		n, err := netns.Hold(path, filepath.Join(dir, bundle.NetnsFile))
		if err != nil {
			return nil, "", fmt.Errorf("network namespace for the hooks: %w", err)
		}
		h.netns, h.state.Pid, path = n, n.Pid(), n.Path
	}
	if err := os.WriteFile(filepath.Join(dir, bundle.HooksPendingFile), nil, 0o600); err != nil {
		h.close(ctx)
		return nil, "", err
	}
	//nolint:staticcheck // prestart is deprecated but still used, and runc runs it
	for _, stage := range []struct {
		kind  string
		hooks []specs.Hook
	}{{"prestart", spec.Hooks.Prestart}, {"createRuntime", spec.Hooks.CreateRuntime}} {
		if err := Run(ctx, stage.kind, stage.hooks, h.state); err != nil {
			h.close(ctx)
			return nil, "", err
		}
	}
	return h, path, nil
}

func hasNetworkNamespace(spec *specs.Spec) bool {
	if spec.Linux == nil {
		return false
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			return true
		}
	}
	return false
}

// Poststart runs the poststart hooks; a failure is logged, as the runtime
// spec asks.
func (h *Container) Poststart(ctx context.Context) {
	if h == nil {
		return
	}
	st := h.state
	st.Status = specs.StateRunning
	if err := Run(ctx, "poststart", h.hooks.Poststart, st); err != nil {
		log.G(ctx).WithError(err).WithField("container", st.ID).Warn("poststart hook failed")
	}
}

// Poststop runs the poststop hooks (nerdctl's CNI DEL) and lets the
// namespace go.
func (h *Container) Poststop(ctx context.Context) {
	if h == nil {
		return
	}
	st := h.state
	st.Status = specs.StateStopped
	if err := Run(ctx, "poststop", h.hooks.Poststop, st); err != nil {
		log.G(ctx).WithError(err).WithField("container", st.ID).Warn("poststop hook failed")
	}
	h.close(ctx)
}

func (h *Container) close(ctx context.Context) {
	os.Remove(filepath.Join(h.state.Bundle, bundle.HooksPendingFile))
	if h.netns != nil {
		if err := h.netns.Close(); err != nil {
			log.G(ctx).WithError(err).WithField("container", h.state.ID).Warn("remove network namespace")
		}
		h.netns = nil
	}
}

// Cleanup runs a dead shim's poststop hooks for the bundle and
// removes the network namespace it made, for the manager's delete.
func Cleanup(ctx context.Context, id, dir string) {
	_, spec, err := bundle.ReadSpec(dir)
	if err != nil {
		return
	}
	made := filepath.Join(dir, bundle.NetnsFile)
	pending := filepath.Join(dir, bundle.HooksPendingFile)
	if _, err := os.Stat(pending); err == nil && spec.Hooks != nil {
		st := specs.State{Version: specs.Version, ID: id, Status: specs.StateStopped, Bundle: dir, Annotations: spec.Annotations}
		if err := Run(ctx, "poststop", spec.Hooks.Poststop, st); err != nil {
			log.G(ctx).WithError(err).Warn("poststop hook of a dead shim's container failed")
		}
	}
	os.Remove(pending)
	if _, err := os.Stat(made); err == nil {
		if err := netns.Remove(made); err != nil {
			log.G(ctx).WithError(err).Warn("remove the network namespace a dead shim made")
		}
	}
}
