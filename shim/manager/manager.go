package manager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"

	// Registers the runtime spec's Features with typeurl.
	_ "github.com/containerd/containerd/v2/core/runtime"

	"github.com/qemu-shim/qemu-shim/internal/mountutil"
	"github.com/qemu-shim/qemu-shim/shim/bundle"
	"github.com/qemu-shim/qemu-shim/shim/config"
	"github.com/qemu-shim/qemu-shim/shim/hooks"
	"github.com/qemu-shim/qemu-shim/shim/rootfs"
	"github.com/qemu-shim/qemu-shim/vm"
)

// Version is the shim's version.
var Version = "dev"

// GroupAnnotations put containers into one shim and one VM (see
// config.GroupAnnotations).
var GroupAnnotations = config.GroupAnnotations

// BinaryOpts configures containerd's shim library for this shim. The
// containers' processes live in the guest, so the shim has no orphans to
// adopt: it is no subreaper, and it does not reap on SIGCHLD. The
// library's reaper would otherwise wait4(-1) every child the moment it
// exits, racing exec.Cmd.Wait of the shim's own commands (mkfs.erofs,
// mkfs.ext4, cp, QEMU, the binary:// logger), which then fail with
// "waitid: no child processes". Every child the shim starts is waited for
// by whoever started it.
func BinaryOpts(c *shim.Config) {
	c.NoSubreaper = true
	c.NoReaper = true
}

// NewShimManager returns the manager of the runtime called name.
func NewShimManager(name string) shim.Shim { return &manager{name: name} }

type manager struct{ name string }

func (m *manager) Name() string { return m.name }

// groupOf reads the bundle's config.json (the working directory) for the
// grouping annotation.
func groupOf(id string) string {
	b, err := os.ReadFile("config.json")
	if err != nil {
		return id
	}
	var s struct {
		Annotations map[string]string `json:"annotations"`
	}
	if json.Unmarshal(b, &s) != nil {
		return id
	}
	for _, k := range GroupAnnotations {
		if g := s.Annotations[k]; g != "" {
			return g
		}
	}
	return id
}

// Start starts the shim daemon for this container's group, or returns the
// address of the one already running.
func (m *manager) Start(ctx context.Context, opts *bootapi.BootstrapParams) (_ *bootapi.BootstrapResult, retErr error) {
	result := &bootapi.BootstrapResult{Version: 3, Protocol: "ttrpc"}
	// containerd 2.4's mount manager leaves these to the shim: erofs
	// layers reach the VM as they are, not mounted on the host.
	if err := result.AddExtension(rootfs.MountCapabilities()); err != nil {
		return nil, err
	}
	id := opts.GetInstanceID()
	group := groupOf(id)

	socketDir := opts.GetSocketDir()
	if socketDir == "" {
		socketDir = filepath.Join(defaults.DefaultStateDir, "s")
	}
	address, err := shim.CreateSocketAddress(ctx, socketDir, opts.GetContainerdGrpcAddress(), group, false)
	if err != nil {
		return nil, err
	}
	socket, err := shim.NewSocket(address)
	if err != nil {
		if !shim.SocketEaddrinuse(err) {
			return nil, fmt.Errorf("create shim socket: %w", err)
		}
		if shim.CanConnect(address) {
			// The group's shim runs already: this container joins its VM.
			result.Address = address
			return result, nil
		}
		if err := shim.RemoveSocket(address); err != nil {
			return nil, fmt.Errorf("remove stale shim socket: %w", err)
		}
		if socket, err = shim.NewSocket(address); err != nil {
			return nil, fmt.Errorf("create shim socket: %w", err)
		}
	}
	defer func() {
		if retErr != nil {
			socket.Close()
			shim.RemoveSocket(address)
		}
	}()
	f, err := socket.File()
	if err != nil {
		return nil, err
	}
	defer f.Close()

	cmd, err := daemonCommand(ctx, id, opts)
	if err != nil {
		return nil, err
	}
	cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			cmd.Process.Kill()
		}
	}()
	go cmd.Wait()
	if err := shim.AdjustOOMScore(cmd.Process.Pid); err != nil {
		log.G(ctx).WithError(err).Warn("adjust the shim's OOM score")
	}
	result.Address = address
	return result, nil
}

// daemonCommand re-executes this binary as the shim daemon.
func daemonCommand(ctx context.Context, id string, opts *bootapi.BootstrapParams) (*exec.Cmd, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	args := []string{"-namespace", ns, "-id", id, "-address", opts.GetContainerdGrpcAddress()}
	if opts.GetLogLevel() <= bootapi.LogLevel_LOG_LEVEL_DEBUG {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = cwd
	cmd.Env = append(os.Environ(), "GOMAXPROCS=4")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd, nil
}

// Stop cleans up after a shim that is gone: its VM's QEMU, if still
// alive, and the container's writable layer.
func (m *manager) Stop(ctx context.Context, id string) (shim.StopStatus, error) {
	bundleDir, err := os.Getwd()
	if err != nil {
		return shim.StopStatus{}, err
	}
	// The shim recorded where its VM's state directory is: the state root
	// is in the configuration the container was created with, which Stop
	// is not told.
	if dir, err := bundle.ReadVMDir(bundleDir); err == nil {
		if pid, err := vm.KillStale(dir); err != nil {
			log.G(ctx).WithError(err).Warn("end the VM left by the shim")
		} else {
			if pid != 0 {
				log.G(ctx).WithField("pid", pid).Warn("ended the QEMU left by the shim")
			}
			// No QEMU owns it any more (a pod's VM dies with its shim).
			if err := mountutil.RemoveAll(dir); err != nil {
				log.G(ctx).WithError(err).Warn("remove the VM state directory left by the shim")
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		log.G(ctx).WithError(err).Warn("VM state directory not cleaned up")
	}
	os.Remove(filepath.Join(bundleDir, bundle.VMDirFile))
	os.Remove(filepath.Join(bundleDir, rootfs.UpperImageName))
	// Its poststop hooks (nerdctl's CNI DEL) and the network namespace it
	// made, now that QEMU is gone.
	hooks.Cleanup(ctx, id, bundleDir)
	// The dead shim could not remove its socket.
	if address := bundle.ShimAddress(bundleDir); address != "" {
		shim.RemoveSocket(address)
	}
	return shim.StopStatus{ExitStatus: 128 + int(syscall.SIGKILL), ExitedAt: time.Now()}, nil
}

// Info describes the runtime, with the OCI features containers get (what
// containerd's CRI plugin asks of a runtime handler, as it asks runc's
// through `runc features`): the guest's runc's mount options, which the
// shim honours for bind mounts too (rro included), the namespaces the
// guest gives, and the hooks that run on the host. User namespaces are not
// offered: virtio-fs in the guest kernel has no idmapped mounts.
func (m *manager) Info(ctx context.Context, optionsR io.Reader) (*types.RuntimeInfo, error) {
	info := &types.RuntimeInfo{Name: m.name, Version: &types.RuntimeVersion{Version: Version}}
	f, err := typeurl.MarshalAnyToProto(Features())
	if err != nil {
		return nil, fmt.Errorf("marshal features: %w", err)
	}
	info.Features = f
	return info, nil
}

// Features is what containers of this runtime can use.
func Features() *features.Features {
	yes := true
	return &features.Features{
		OCIVersionMin: "1.0.0",
		OCIVersionMax: specs.Version,
		Hooks:         []string{"prestart", "createRuntime", "poststart", "poststop"},
		MountOptions: []string{
			"async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "iversion", "lazytime", "loud",
			"mand", "noatime", "nodev", "nodiratime", "noexec", "nolazytime", "nomand", "norelatime", "nostrictatime",
			"nosuid", "nosymfollow", "private", "ratime", "rbind", "rdev", "rdiratime", "relatime", "remount", "rexec",
			"rnoatime", "rnodev", "rnodiratime", "rnoexec", "rnorelatime", "rnostrictatime", "rnosuid", "rnosymfollow",
			"ro", "rprivate", "rrelatime", "rro", "rrw", "rshared", "rslave", "rstrictatime", "rsuid", "rsymfollow",
			"runbindable", "rw", "shared", "silent", "slave", "strictatime", "suid", "symfollow", "sync", "unbindable",
		},
		Linux: &features.Linux{
			Namespaces: []string{"cgroup", "ipc", "mount", "network", "pid", "uts"},
			Cgroup:     &features.Cgroup{V2: &yes, Systemd: new(bool)},
			Seccomp:    &features.Seccomp{Enabled: &yes},
		},
	}
}
