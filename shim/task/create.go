package task

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/qemu-shim/qemu-shim/api/wire"
	"github.com/qemu-shim/qemu-shim/internal/timeline"
	"github.com/qemu-shim/qemu-shim/shim/bundle"
	"github.com/qemu-shim/qemu-shim/shim/config"
	"github.com/qemu-shim/qemu-shim/shim/hooks"
	"github.com/qemu-shim/qemu-shim/shim/operator"
	"github.com/qemu-shim/qemu-shim/shim/sandbox"
	"github.com/qemu-shim/qemu-shim/shim/share"
	"github.com/qemu-shim/qemu-shim/shim/stdio"
)

// loadConfig finds the configuration: runtime options (ConfigPath) first,
// then the environment and the default file.
func loadConfig(opts any) (config.Config, error) {
	path := ""
	if o, ok := opts.(*runtimeoptions.Options); ok && o.ConfigPath != "" {
		path = o.ConfigPath
	}
	if env := os.Getenv(config.EnvPath); path == "" && env != "" {
		path = env
	}
	return config.Load(path)
}

// Create boots the VM if this is its first container, then makes the
// container in it.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	resp, err := s.create(ctx, r)
	return resp, toGRPC(err)
}

func (s *Service) create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	_, spec, err := bundle.ReadSpec(r.Bundle)
	if err != nil {
		return nil, err
	}
	var opts any
	if r.Options != nil {
		if opts, err = typeurl.UnmarshalAny(r.Options); err != nil {
			log.G(ctx).WithError(err).Debug("runtime options not understood: ignored")
			opts = nil
		}
	}
	cfg, err := loadConfig(opts)
	if err != nil {
		return nil, err
	}
	if err := cfg.ApplyAnnotations(spec.Annotations); err != nil {
		return nil, err
	}
	if err := checkHostNamespaces(r.ID, spec); err != nil {
		return nil, err
	}
	// Devices are refused before a VM boots for them; the spec sent to the
	// guest changes when some are left out or attached.
	blockDevs, err := planDevices(ctx, r.ID, spec, hostBlockDevice)
	if err != nil {
		return nil, err
	}
	// Only the shim names disks and the OCI runtime to the guest (the
	// spec sent is always the shim's rewrite of the bundle's).
	delete(spec.Annotations, wire.BlockDevicesAnnotation)
	if spec.Annotations == nil {
		spec.Annotations = map[string]string{}
	}
	spec.Annotations[wire.OCIRuntimeAnnotation] = cfg.VM.OCIRuntime
	var size config.Size
	if spec.Linux != nil {
		size = config.SizeOf(spec.Linux.Resources)
	}
	podSize, err := config.PodSizeOf(spec.Annotations)
	if err != nil {
		return nil, err
	}

	// The ID is taken, and the size counts, from here on.
	host := stdio.Stdio{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal}
	c := &container{id: r.ID, bundle: r.Bundle, rootfs: r.Rootfs, stdio: host, size: size, procs: map[string]*proc{}}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil, fmt.Errorf("container %s: the shim is shutting down: %w", r.ID, errdefs.ErrFailedPrecondition)
	}
	if _, ok := s.containers[r.ID]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("container %s: %w", r.ID, errdefs.ErrAlreadyExists)
	}
	s.containers[r.ID] = c
	s.mu.Unlock()
	var sb sandbox.Sandbox
	bootedHere := false
	tl := timeline.New()
	defer func() { tl.Log(ctx, "create "+r.ID) }()
	defer func() {
		if retErr != nil {
			s.failedCreate(ctx, c, sb, bootedHere)
		}
	}()

	sb, bootedHere, err = s.sandboxFor(ctx, r.ID, cfg, spec, size, podSize)
	if err != nil {
		return nil, err
	}
	tl.Step("vm")
	if !bootedHere { // a pod's next container
		if err := s.resize(ctx, sb); err != nil {
			return nil, fmt.Errorf("container %s: %w", r.ID, err)
		}
	}
	// Only the container that booted the VM names it for the cleanup after
	// a crash: the cleanup of a pod's later container (containerd's after
	// its failed create, too) must not end the pod's VM.
	if bootedHere {
		vmDirFile := filepath.Join(r.Bundle, bundle.VMDirFile)
		if err := os.WriteFile(vmDirFile, []byte(sb.StateDir()), 0o600); err != nil {
			return nil, err
		}
		defer func() {
			if retErr != nil {
				os.Remove(vmDirFile)
			}
		}()
	}

	began := time.Now()
	guestRootfs, err := sb.AttachRootfs(ctx, r.ID, r.Bundle, r.Rootfs)
	if err != nil {
		return nil, err
	}
	tl.Step("rootfs")
	log.G(ctx).WithField("took", time.Since(began)).Debug("rootfs attached")
	if err := attachDevices(ctx, sb, r.ID, spec, blockDevs); err != nil {
		return nil, err // detached by the Release above
	}

	// The hooks (nerdctl's CNI setup) run before the wiring: what they make
	// in the namespace is what the VM is wired to.
	hh, netPath, err := hooks.RunCreate(ctx, r.ID, r.Bundle, spec, s.resolveNetns(spec, sb))
	if err != nil {
		return nil, err
	}
	c.hooks = hh // their poststop runs in failedCreate, as runc's destroy of a failed create
	if netPath != "" {
		if err := sb.JoinNetwork(ctx, r.ID, netPath); err != nil {
			return nil, err
		}
	}

	// Bind mounts reach the guest through the share; the guest's spec
	// names their staged entries.
	if share.Binds(spec.Mounts) > 0 {
		if spec.Mounts, err = sb.Stage(r.ID, spec.Mounts); err != nil {
			return nil, err
		}
	}
	configJSON, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}

	tl.Step("devices-hooks-network-binds")
	pio, guest, err := s.openIO(ctx, sb, r.ID, host)
	if err != nil {
		return nil, err
	}
	tl.Step("stdio")
	p := newProc(pio, host)
	req := &taskAPI.CreateTaskRequest{
		ID: r.ID, Bundle: r.Bundle, Rootfs: guestRootfs, Terminal: r.Terminal,
		Stdin: guest.Stdin, Stdout: guest.Stdout, Stderr: guest.Stderr,
		Options: wire.SpecAny(configJSON),
	}
	resp, err := guestCall(ctx, s, sb, "create", s.timeouts.create, func(ctx context.Context, a taskAPI.TTRPCTaskService) (*taskAPI.CreateTaskResponse, error) {
		return a.Create(ctx, req)
	})
	if err != nil {
		pio.Close()
		return nil, err
	}
	tl.Step("guest-create")
	s.mu.Lock()
	c.procs[""] = p
	c.pid = resp.Pid
	c.created = true
	gone := s.gone[sb]
	s.mu.Unlock()
	if gone {
		// The VM ended after the guest made the container but before it
		// was known here, so watchSandbox did not see it: it is killed.
		s.reportKilled(c.id, "", p, c.pid)
	}
	return resp, nil
}

// failedCreate undoes a create that failed, in the order a delete does:
// what the VM holds for the container (disks, cards, staged mounts), then
// its poststop hooks (CNI DEL), then the container itself; the VM it
// booted is stopped if no other container came meanwhile, and a VM that
// grew for it gives back what it no longer needs.
func (s *Service) failedCreate(ctx context.Context, c *container, sb sandbox.Sandbox, bootedHere bool) {
	if sb != nil {
		s.mu.Lock()
		last := len(s.containers) == 1
		s.mu.Unlock()
		sb.Release(ctx, c.id, last)
	}
	c.hooks.Poststop(ctx)
	// bootMu: no Create takes the sandbox while it is being stopped.
	s.bootMu.Lock()
	defer s.bootMu.Unlock()
	s.mu.Lock()
	delete(s.containers, c.id)
	last := len(s.containers) == 0
	s.mu.Unlock()
	switch {
	case sb == nil:
	case bootedHere && last:
		s.stopSandbox(ctx, sb)
	case !last && !ended(sb):
		s.sizeMu.Lock()
		s.shrink(ctx, sb)
		s.sizeMu.Unlock()
	}
}

// sandboxFor returns the shim's sandbox, booting it for this container if
// it is the first: sized for it or, for a pod, for the pod (its sandbox
// carries the sum of its containers' limits), with a share of host files
// when it has bind mounts or is a pod's (whose later containers, as
// Kubernetes', bring theirs).
func (s *Service) sandboxFor(ctx context.Context, id string, cfg config.Config, spec *specs.Spec, size, podSize config.Size) (sandbox.Sandbox, bool, error) {
	s.bootMu.Lock()
	defer s.bootMu.Unlock()
	if sb := s.sandbox(); sb != nil {
		select {
		case <-sb.Done():
			return nil, false, fmt.Errorf("container %s: the VM of this shim has ended (%s): %w", id, sb.ExitStatus(), errdefs.ErrFailedPrecondition)
		default:
		}
		return sb, false, nil
	}
	ns, ok := namespaces.Namespace(ctx)
	if !ok {
		return nil, false, fmt.Errorf("container %s: no namespace: %w", id, errdefs.ErrFailedPrecondition)
	}
	sb, err := s.boot(ctx, sandbox.Spec{
		Name:   bundle.VMName(ns, id),
		Config: cfg,
		Size:   config.Size{CPUs: max(size.CPUs, podSize.CPUs), MemoryMiB: max(size.MemoryMiB, podSize.MemoryMiB)},
		Share:  share.Binds(spec.Mounts) > 0 || podOf(spec.Annotations),
	})
	if err != nil {
		return nil, false, fmt.Errorf("container %s: %w", id, err)
	}
	s.mu.Lock()
	s.sb, s.cfg, s.podSize, s.joinable = sb, cfg, podSize, podOf(spec.Annotations)
	s.mu.Unlock()
	go s.forwardEvents(sb)
	go s.watchSandbox(sb)
	s.serveOperator(ctx, sb, ns, cfg)
	return sb, true, nil
}

// serveOperator serves the operator's API (shim/operator) on a socket in
// the VM's state directory while the VM runs. Without it the VM runs on:
// only the 'qemu-shim disk' commands miss it.
func (s *Service) serveOperator(ctx context.Context, sb sandbox.Sandbox, ns string, cfg config.Config) {
	disks, ok := sb.(sandbox.OperatorDisks)
	if !ok {
		return
	}
	srv := &operator.Server{Namespace: ns, Roots: cfg.Operator.DiskRoots, Disks: disks, Containers: s.createdContainers}
	stop, err := srv.Serve(context.WithoutCancel(s.ctx), filepath.Join(sb.StateDir(), operator.SocketName))
	if err != nil {
		log.G(ctx).WithError(err).Warn("operator socket: 'qemu-shim disk' will not reach this VM")
		return
	}
	go func() {
		<-sb.Done()
		stop()
	}()
}

// createdContainers lists the containers created in the VM.
func (s *Service) createdContainers() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for id, c := range s.containers {
		if c.created {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// stopSandbox ends the VM; a later Create boots a new one.
func (s *Service) stopSandbox(ctx context.Context, sb sandbox.Sandbox) {
	begin := time.Now()
	if err := sb.Stop(ctx); err != nil {
		log.G(ctx).WithError(err).Warn("shut down VM")
	}
	log.G(ctx).WithField("took", time.Since(begin)).Debug("VM stopped")
	s.mu.Lock()
	if s.sb == sb {
		s.sb = nil
	}
	s.mu.Unlock()
}

func (s *Service) openIO(ctx context.Context, sb sandbox.Sandbox, id string, host stdio.Stdio) (*stdio.IO, stdio.Stdio, error) {
	ns, _ := namespaces.Namespace(ctx)
	prefix := "s" + strconv.FormatInt(s.streamSeq.Add(1), 10)
	return stdio.Open(ctx, ns, id, host, prefix, sb.DialStream)
}

// networkPath is the path of the network namespace the spec joins, or "".
func networkPath(spec *specs.Spec) string {
	if spec.Linux == nil {
		return ""
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			return ns.Path
		}
	}
	return ""
}

// siblingNetns matches the network namespace of another container's
// process, as containerd's CRI plugin names the pod's for its containers
// (/proc/<the sandbox's pid>/ns/net).
var siblingNetns = regexp.MustCompile(`^/proc/([0-9]{1,10})/ns/net$`)

// resolveNetns returns the host-side network namespace a spec's container
// joins: its path, or, when the path names a process of one of this VM's
// containers (by the guest pid containerd was told), the namespace wired
// to the VM already ("" if none was).
func (s *Service) resolveNetns(spec *specs.Spec, sb sandbox.Sandbox) string {
	path := networkPath(spec)
	if m := siblingNetns.FindStringSubmatch(path); m != nil {
		pid, _ := strconv.ParseUint(m[1], 10, 32)
		s.mu.Lock()
		sibling := false
		for _, c := range s.containers {
			sibling = sibling || (c.created && c.pid == uint32(pid))
		}
		s.mu.Unlock()
		if sibling {
			return sb.NetworkPath()
		}
	}
	return path
}

// podOf says whether a container belongs to a pod (or group) whose VM
// later containers join.
func podOf(annotations map[string]string) bool {
	for _, k := range config.GroupAnnotations {
		if annotations[k] != "" {
			return true
		}
	}
	return false
}

// checkHostNamespaces refuses a Kubernetes pod that asks for the node's
// network, PID or IPC namespace (hostNetwork, hostPID, hostIPC): in a VM
// they would be the guest's, which is not what the pod asked for. (Outside
// Kubernetes, a spec without a network namespace gets the guest's root
// one, with only lo: see the README.)
func checkHostNamespaces(id string, spec *specs.Spec) error {
	if spec.Annotations["io.kubernetes.cri.container-type"] != "sandbox" || spec.Linux == nil {
		return nil
	}
	for _, t := range []specs.LinuxNamespaceType{specs.NetworkNamespace, specs.PIDNamespace, specs.IPCNamespace} {
		found := false
		for _, ns := range spec.Linux.Namespaces {
			found = found || ns.Type == t
		}
		if !found {
			return fmt.Errorf("pod sandbox %s asks for the host's %s namespace (hostNetwork, hostPID or hostIPC): a pod in a VM cannot share the node's: %w", id, t, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}
