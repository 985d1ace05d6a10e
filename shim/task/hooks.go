package task

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/qemu-shim/qemu-shim/shim/hooks"
	"github.com/qemu-shim/qemu-shim/shim/netns"
)

// In a bundle: NetnsFile is the network namespace the shim made for a
// container whose spec asks for a new one and has hooks to configure it;
// hooksPendingFile says its poststop hooks have yet to run (for the
// cleanup after a shim that died).
const (
	NetnsFile        = "qemu-shim-netns"
	hooksPendingFile = "qemu-shim-poststop-pending"
)

// hostHooks is what a container's OCI hooks need on the host.
type hostHooks struct {
	hooks *specs.Hooks
	// netns holds the container's host-side network namespace; nil when
	// the spec has none (the hooks then get the shim's pid).
	netns *netns.Namespace
	state specs.State
}

// runCreateHooks runs the prestart and createRuntime hooks on the host, as
// runc does during create, with a state whose pid is a host process in the
// container's host-side network namespace (made here if the spec asks for
// a new one); path is the host-side namespace the spec joins (see
// resolveNetns). It returns the namespace's path for the wiring, "" if
// none.
func runCreateHooks(ctx context.Context, id, bundle string, spec *specs.Spec, path string) (*hostHooks, string, error) {
	if hooks.HostHooks(spec.Hooks) == 0 {
		return nil, path, nil
	}
	h := &hostHooks{hooks: spec.Hooks, state: specs.State{
		Version: specs.Version, ID: id, Status: specs.StateCreating, Bundle: bundle, Annotations: spec.Annotations,
		Pid: os.Getpid(),
	}}
	if hasNetworkNamespace(spec) {
		n, err := netns.Hold(path, filepath.Join(bundle, NetnsFile))
		if err != nil {
			return nil, "", fmt.Errorf("network namespace for the hooks: %w", err)
		}
		h.netns, h.state.Pid, path = n, n.Pid(), n.Path
	}
	if err := os.WriteFile(filepath.Join(bundle, hooksPendingFile), nil, 0o600); err != nil {
		h.close(ctx)
		return nil, "", err
	}
	//nolint:staticcheck // prestart is deprecated but still used, and runc runs it
	for _, stage := range []struct {
		kind  string
		hooks []specs.Hook
	}{{"prestart", spec.Hooks.Prestart}, {"createRuntime", spec.Hooks.CreateRuntime}} {
		if err := hooks.Run(ctx, stage.kind, stage.hooks, h.state); err != nil {
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

// poststart runs the poststart hooks; a failure is logged, as the runtime
// spec asks.
func (h *hostHooks) poststart(ctx context.Context) {
	if h == nil {
		return
	}
	st := h.state
	st.Status = specs.StateRunning
	if err := hooks.Run(ctx, "poststart", h.hooks.Poststart, st); err != nil {
		log.G(ctx).WithError(err).WithField("container", st.ID).Warn("poststart hook failed")
	}
}

// poststop runs the poststop hooks (nerdctl's CNI DEL) and lets the
// namespace go.
func (h *hostHooks) poststop(ctx context.Context) {
	if h == nil {
		return
	}
	st := h.state
	st.Status = specs.StateStopped
	if err := hooks.Run(ctx, "poststop", h.hooks.Poststop, st); err != nil {
		log.G(ctx).WithError(err).WithField("container", st.ID).Warn("poststop hook failed")
	}
	h.close(ctx)
}

func (h *hostHooks) close(ctx context.Context) {
	os.Remove(filepath.Join(h.state.Bundle, hooksPendingFile))
	if h.netns != nil {
		if err := h.netns.Close(); err != nil {
			log.G(ctx).WithError(err).WithField("container", h.state.ID).Warn("remove network namespace")
		}
		h.netns = nil
	}
}

// CleanupHooks runs a dead shim's poststop hooks for the bundle and
// removes the network namespace it made, for the manager's delete.
func CleanupHooks(ctx context.Context, id, bundle string) {
	_, spec, err := readSpec(bundle)
	if err != nil {
		return
	}
	made := filepath.Join(bundle, NetnsFile)
	pending := filepath.Join(bundle, hooksPendingFile)
	if _, err := os.Stat(pending); err == nil && spec.Hooks != nil {
		st := specs.State{Version: specs.Version, ID: id, Status: specs.StateStopped, Bundle: bundle, Annotations: spec.Annotations}
		if err := hooks.Run(ctx, "poststop", spec.Hooks.Poststop, st); err != nil {
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
