// Package sandbox is the VM of one shim as its task service sees it: the
// guest's task service and event stream, the stdio streams, and what the
// VM holds for its containers (root filesystem disks, host block devices,
// the network cards standing in for their network namespace, the share of
// their bind mounts) and its size. The task service depends on the
// Sandbox interface only, so its lifecycle is tested against a fake; VM is
// the real one.
//
// A Sandbox is safe for concurrent use. Its locks guard its own
// bookkeeping: one container's disk hot-plug or network wiring never holds
// up another container's calls to the guest.
package sandbox

import (
	"context"
	"net"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	eventsapi "github.com/qemu-shim/qemu-shim/api/events/v1"
	"github.com/qemu-shim/qemu-shim/shim/config"
)

// Sandbox is a running VM and its agent, for the containers of one shim.
type Sandbox interface {
	// Tasks is the guest's task service (containerd's task API).
	Tasks(ctx context.Context) (taskAPI.TTRPCTaskService, error)
	// Events streams the guest's events after sequence number after.
	Events(ctx context.Context, after uint64) (eventsapi.Events_StreamClient, error)
	// DialStream opens the named stdio stream a Create or Exec refers to.
	DialStream(ctx context.Context, name string) (net.Conn, error)

	// AttachRootfs makes a container's root filesystem (containerd's
	// mounts, in its bundle) into disks the guest can mount, attaches
	// them, and returns the mounts that name them for the guest.
	AttachRootfs(ctx context.Context, id, bundle string, rootfs []*types.Mount) ([]*types.Mount, error)
	// AttachBlockDevice attaches the host block device whose node is path
	// as a raw disk (read-only if asked) and returns its serial; Release
	// detaches it with the last container using it.
	AttachBlockDevice(ctx context.Context, id, path string, readOnly bool) (string, error)
	// JoinNetwork wires the host's network namespace at path to the VM;
	// the containers of a VM share one, so a later container naming the
	// same path joins it, and another path is refused.
	JoinNetwork(ctx context.Context, id, path string) error
	// NetworkPath is the namespace wired to the VM, "" if none.
	NetworkPath() string
	// Stage puts a container's bind mounts in the VM's share and returns
	// the mounts as the guest sees them.
	Stage(id string, mounts []specs.Mount) ([]specs.Mount, error)
	// Release gives back what a container holds: its disks (left plugged
	// in for the VM's last container, since the VM stops next), its
	// staged mounts and, when it wired the network and is the VM's last
	// container, the network. Best effort: failures are logged.
	Release(ctx context.Context, id string, last bool)

	// Grow hot-plugs vCPUs and memory until the VM has at least cpus and
	// memMiB; Shrink gives vCPUs and memory back down to cpus and memMiB
	// where the guest lets it.
	Grow(ctx context.Context, cpus, memMiB int) error
	Shrink(ctx context.Context, cpus, memMiB int)

	// StateDir is the VM's state directory on the host.
	StateDir() string
	// Done is closed once the VM has ended, whoever ended it.
	Done() <-chan struct{}
	// ExitStatus says how the VM ended, once it has.
	ExitStatus() string
	// ConsoleTail is the end of what the guest wrote to its console (at
	// most max bytes): what explains a guest that does not answer.
	ConsoleTail(max int) []byte
	// Stop ends the VM and releases everything it held; Kill does so at
	// once, without asking a guest that may not answer.
	Stop(ctx context.Context) error
	Kill(ctx context.Context) error
}

// Spec is what a sandbox boots with.
type Spec struct {
	// Name names the VM and its state directory (bundle.VMName).
	Name   string
	Config config.Config
	// Size is what the VM starts with, within Config's maxima.
	Size config.Size
	// Share says whether the VM gets a share of host files: it is decided
	// at boot, since the guest's memory must be shared for it.
	Share bool
}

// Booter starts a sandbox.
type Booter func(ctx context.Context, spec Spec) (Sandbox, error)
