package task

import (
	"context"
	"errors"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestAdaptSpecNamespaces: a pod's container joins the sandbox's
// namespaces by /proc/<init pid>/ns/* when that pid is a container of the
// guest; any other path becomes a new namespace (never the guest's own),
// and the network namespace is the VM's.
func TestAdaptSpecNamespaces(t *testing.T) {
	spec := &specs.Spec{Process: &specs.Process{}, Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
		{Type: specs.IPCNamespace, Path: "/proc/120/ns/ipc"},
		{Type: specs.UTSNamespace, Path: "/proc/120/ns/uts"},
		{Type: specs.PIDNamespace, Path: "/proc/121/ns/pid"},   // an exec, not an init
		{Type: specs.MountNamespace, Path: "/proc/120/ns/ipc"}, // the wrong type
		{Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1"},
		{Type: specs.CgroupNamespace},
	}}}
	env := adaptEnv{
		netns:  func() (string, error) { return "/run/vm-netns", nil },
		isInit: func(pid int) bool { return pid == 120 },
	}
	if err := adaptSpec(context.Background(), "c1", spec, env); err != nil {
		t.Fatal(err)
	}
	want := map[specs.LinuxNamespaceType]string{
		specs.IPCNamespace: "/proc/120/ns/ipc", specs.UTSNamespace: "/proc/120/ns/uts",
		specs.PIDNamespace: "", specs.MountNamespace: "", specs.NetworkNamespace: "/run/vm-netns", specs.CgroupNamespace: "",
	}
	if len(spec.Linux.Namespaces) != len(want) {
		t.Fatalf("namespaces %+v", spec.Linux.Namespaces)
	}
	for _, ns := range spec.Linux.Namespaces {
		if p, ok := want[ns.Type]; !ok || p != ns.Path {
			t.Errorf("%s namespace path %q, want %q", ns.Type, ns.Path, p)
		}
	}
}

// TestAdaptSpecShareEntries: staged bind mounts point into the share; a
// name that is no staged entry, or a guest without a share, is refused.
func TestAdaptSpecShareEntries(t *testing.T) {
	share := func() (string, error) { return "/run/share", nil }
	mk := func(src string) *specs.Spec {
		return &specs.Spec{Process: &specs.Process{}, Linux: &specs.Linux{}, Mounts: []specs.Mount{
			{Destination: "/data", Type: "bind", Source: src, Options: []string{"rbind", "ro"}},
		}}
	}
	s := mk("qemu-shim-share:c3/m1")
	if err := adaptSpec(context.Background(), "c1", s, adaptEnv{share: share}); err != nil {
		t.Fatal(err)
	}
	if s.Mounts[0].Source != "/run/share/c3/m1" {
		t.Errorf("source %q", s.Mounts[0].Source)
	}
	for _, bad := range []string{"qemu-shim-share:../etc", "qemu-shim-share:c3/m1/../../x", "qemu-shim-share:c3"} {
		if err := adaptSpec(context.Background(), "c1", mk(bad), adaptEnv{share: share}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v", bad, err)
		}
	}
	if err := adaptSpec(context.Background(), "c1", mk("qemu-shim-share:c1/m0"), adaptEnv{}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("no share: %v", err)
	}
}
