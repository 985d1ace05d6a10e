package sandbox

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/qemu-shim/qemu-shim/shim/share"
)

// Stage puts a container's bind mounts in the share. A VM booted without
// a share refuses bind mounts.
func (v *VM) Stage(id string, mounts []specs.Mount) ([]specs.Mount, error) {
	n := share.Binds(mounts)
	if n == 0 {
		return mounts, nil
	}
	v.shareMu.Lock()
	defer v.shareMu.Unlock()
	if v.staging == nil {
		return nil, fmt.Errorf("container %s has %d bind mounts, but its VM was started without a share of host files (its first container had none and is no pod's): %w", id, n, errdefs.ErrFailedPrecondition)
	}
	if _, ok := v.staged[id]; ok {
		return nil, fmt.Errorf("bind mounts of container %s: staged already: %w", id, errdefs.ErrAlreadyExists)
	}
	guest, entry, err := v.staging.Add(mounts)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	v.staged[id] = entry
	return guest, nil
}

func (v *VM) unstage(ctx context.Context, id string) {
	v.shareMu.Lock()
	defer v.shareMu.Unlock()
	entry, ok := v.staged[id]
	if !ok {
		return
	}
	delete(v.staged, id)
	if err := v.staging.Remove(entry); err != nil {
		log.G(ctx).WithError(err).WithField("container", id).Warn("unstage bind mounts")
	}
}
