package task

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"

	agentapi "github.com/qemu-shim/qemu-shim/api/agent/v1"
	"github.com/qemu-shim/qemu-shim/api/wire"
)

// CgroupParent is the guest cgroup that holds every container's.
const CgroupParent = "/qemu-shim"

// decodeSpec reads the spec out of CreateTaskRequest.Options.
func decodeSpec(a *anypb.Any) (*specs.Spec, error) {
	if a == nil || a.TypeUrl != wire.SpecTypeURL {
		return nil, fmt.Errorf("create needs the bundle's config.json in options (type %s): %w", wire.SpecTypeURL, errdefs.ErrInvalidArgument)
	}
	if len(a.Value) > wire.MaxSpecSize {
		return nil, fmt.Errorf("config.json of %d bytes is over %d: %w", len(a.Value), wire.MaxSpecSize, errdefs.ErrInvalidArgument)
	}
	var s specs.Spec
	if err := json.Unmarshal(a.Value, &s); err != nil {
		return nil, fmt.Errorf("config.json: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if s.Process == nil {
		return nil, fmt.Errorf("config.json has no process: %w", errdefs.ErrInvalidArgument)
	}
	if s.Linux == nil {
		s.Linux = &specs.Linux{}
	}
	return &s, nil
}

// adaptSpec turns a host's spec into one that runs in this guest: the root
// is the rootfs assembled here, the cgroup is below CgroupParent, and what
// names host objects (namespace paths, hooks, bind mounts of host files)
// is left out, since the guest has none of them. A network namespace, new
// or by path, is the VM's container network namespace, which holds the
// cards wired to the host-side one: every container of the VM that asks
// for a network namespace shares it. A spec with no network namespace
// (the host's network, to runc) gets the guest's root namespace, which has
// only lo.
//
// A namespace path /proc/<pid>/ns/<type> where pid is the init of another
// container of this guest (as containerd's CRI plugin names the pod
// sandbox's namespaces, by the pid it was told) is kept: the container
// joins that one. Any other path names a host object, and the container
// gets a new namespace of that type instead.
//
// Block devices get the numbers of the disks the host attached for them
// (adaptDevices).
func adaptSpec(ctx context.Context, id string, s *specs.Spec, env adaptEnv) error {
	netns, share := env.netns, env.share
	l := log.G(ctx).WithField("container", id)
	readonly := s.Root != nil && s.Root.Readonly
	s.Root = &specs.Root{Path: "rootfs", Readonly: readonly}
	s.Linux.CgroupsPath = path.Join(CgroupParent, id)

	var nss []specs.LinuxNamespace
	hasCgroupNS := false
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace && netns != nil {
			p, err := netns()
			if err != nil {
				return fmt.Errorf("container network namespace: %w", err)
			}
			nss = append(nss, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: p})
			continue
		}
		if ns.Path != "" && !(env.isInit != nil && siblingNamespace(ns, env.isInit)) {
			l.WithField("namespace", ns.Type).WithField("path", ns.Path).Info("namespace path names no container of this guest: a new namespace instead")
			ns.Path = ""
		}
		if ns.Type == specs.CgroupNamespace {
			hasCgroupNS = true
		}
		nss = append(nss, ns)
	}
	if !hasCgroupNS {
		// Without it the container would see the guest's whole hierarchy.
		nss = append(nss, specs.LinuxNamespace{Type: specs.CgroupNamespace})
	}
	s.Linux.Namespaces = nss

	if err := adaptDevices(ctx, id, s, env.disk); err != nil {
		return err
	}

	if s.Hooks != nil {
		l.Info("OCI hooks name host binaries: not run in the guest")
		s.Hooks = nil
	}
	var mounts []specs.Mount
	for _, m := range s.Mounts {
		if rel, ok := strings.CutPrefix(m.Source, agentapi.ShareSourcePrefix); ok && isBind(m) {
			// A host file or directory the host staged in the share.
			if !agentapi.ValidShareEntry(rel) {
				return fmt.Errorf("mount on %s: share entry %q: %w", m.Destination, rel, errdefs.ErrInvalidArgument)
			}
			if share == nil {
				return fmt.Errorf("mount on %s: this guest has no share of host files: %w", m.Destination, errdefs.ErrFailedPrecondition)
			}
			root, err := share()
			if err != nil {
				return fmt.Errorf("mount on %s: %w", m.Destination, err)
			}
			m.Source = path.Join(root, rel)
			mounts = append(mounts, m)
			continue
		}
		if isBind(m) {
			if _, err := os.Stat(m.Source); err != nil {
				l.WithField("source", m.Source).WithField("destination", m.Destination).Warn("bind mount source is not in the guest: left out")
				continue
			}
		}
		mounts = append(mounts, m)
	}
	s.Mounts = mounts
	return nil
}

// adaptEnv is what adaptSpec needs of the guest.
type adaptEnv struct {
	// netns and share return the VM's container network namespace and the
	// host's share, made on first use; nil when the guest has none.
	netns, share func() (string, error)
	// isInit says whether pid is the init of a container of this guest.
	isInit func(pid int) bool
	// disk waits for the disk with this serial and returns its device
	// numbers; nil when the guest has no disks to look for.
	disk func(serial string) (major, minor int64, err error)
}

var siblingPath = regexp.MustCompile(`^/proc/([0-9]{1,10})/ns/([a-z]{2,8})$`)

// siblingNamespace says whether ns names the namespace of its type of
// another container's init in this guest.
func siblingNamespace(ns specs.LinuxNamespace, isInit func(int) bool) bool {
	m := siblingPath.FindStringSubmatch(ns.Path)
	if m == nil {
		return false
	}
	kind := map[string]specs.LinuxNamespaceType{
		"ipc": specs.IPCNamespace, "uts": specs.UTSNamespace, "pid": specs.PIDNamespace, "mnt": specs.MountNamespace,
		"cgroup": specs.CgroupNamespace, "user": specs.UserNamespace, "net": specs.NetworkNamespace, "time": specs.TimeNamespace,
	}[m[2]]
	pid, err := strconv.Atoi(m[1])
	return err == nil && kind == ns.Type && isInit(pid)
}

func isBind(m specs.Mount) bool {
	if m.Type == "bind" {
		return true
	}
	for _, o := range m.Options {
		if o == "bind" || o == "rbind" {
			return true
		}
	}
	return false
}
