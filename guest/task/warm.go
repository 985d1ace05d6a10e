package task

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"time"

	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// warmID names the warm-up's container: Create refuses a leading
// underscore (validID), so no container of the host's can take it.
const warmID = "_qemu-shim-warm"

// warmDeleteWait bounds how long Warm waits for a first container's start
// before it deletes its own.
const warmDeleteWait = 5 * time.Second

// Warm creates and deletes a throwaway container with the default OCI
// runtime, the way a container's create goes (a spec decoded and encoded;
// the namespaces, mounts and cgroup made; the containers' network
// namespace joined). A VM restored from a template runs it at once when
// it runs under an emulator: the saved state kept no translated code, so
// each guest path is slow the first time it runs, and the warm-up takes
// that first time on the guest's idle vCPU while the host is attaching the
// first container's disks. The container is deleted once a container has
// started (or after warmDeleteWait), not while it starts.
func (s *Service) Warm(ctx context.Context) error {
	began := time.Now()
	rt, ok := s.runtimes[s.cfg.DefaultRuntime]
	if !ok {
		return nil
	}
	if err := os.MkdirAll(s.cfg.Root, 0o711); err != nil {
		return fmt.Errorf("warm-up bundle: %w", err)
	}
	dir, err := os.MkdirTemp(s.cfg.Root, ".warm-")
	if err != nil {
		return fmt.Errorf("warm-up bundle: %w", err)
	}
	defer os.RemoveAll(dir)
	rootfs := filepath.Join(dir, "rootfs")
	for _, d := range []string{"proc", "dev", "sys"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			return fmt.Errorf("warm-up bundle: %w", err)
		}
	}
	// The runtime checks at create that the process can be executed; it
	// never is.
	if err := os.WriteFile(filepath.Join(rootfs, "warm"), nil, 0o755); err != nil {
		return fmt.Errorf("warm-up bundle: %w", err)
	}
	b, err := json.Marshal(s.warmSpec())
	if err == nil {
		var spec specs.Spec
		if err = json.Unmarshal(b, &spec); err == nil {
			b, err = json.Marshal(&spec)
		}
	}
	if err != nil {
		return fmt.Errorf("warm-up spec: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		return fmt.Errorf("warm-up bundle: %w", err)
	}
	// Files, not pipes: the runtime's output would otherwise be read
	// until the container's init, which inherits it, is gone.
	null, err := runc.NewNullIO()
	if err != nil {
		return fmt.Errorf("warm-up stdio: %w", err)
	}
	defer null.Close()
	r := *rt
	r.Log = filepath.Join(dir, "log.json")
	if err := r.Create(ctx, warmID, dir, &runc.CreateOpts{IO: null, PidFile: filepath.Join(dir, "pid")}); err != nil {
		r.Delete(context.WithoutCancel(ctx), warmID, &runc.DeleteOpts{Force: true})
		return fmt.Errorf("warm-up container %s: %s create: %w: %s", warmID, s.cfg.DefaultRuntime, err, lastRuncError(r.Log))
	}
	select {
	case <-s.started:
	case <-time.After(warmDeleteWait):
	}
	if err := r.Delete(context.WithoutCancel(ctx), warmID, &runc.DeleteOpts{Force: true}); err != nil {
		// Its state and cgroup stay until the VM ends.
		return fmt.Errorf("warm-up container %s, left until the VM ends: %s delete: %w: %s", warmID, s.cfg.DefaultRuntime, err, lastRuncError(r.Log))
	}
	debugTook(ctx, "warmed up", began)
	return nil
}

// warmSpec is what a container's spec looks like after adaptSpec, as
// containerd's default spec gives it: its namespaces (the network one the
// containers' own), mounts, masked and read-only paths, and a cgroup below
// CgroupParent.
func (s *Service) warmSpec() *specs.Spec {
	caps := []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"}
	nss := []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}, {Type: specs.MountNamespace}, {Type: specs.CgroupNamespace}}
	if s.cfg.NetworkNamespace != nil {
		if p, err := s.cfg.NetworkNamespace(); err == nil {
			nss = append(nss, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: p})
		}
	}
	return &specs.Spec{
		Version: "1.0.2",
		Root:    &specs.Root{Path: "rootfs", Readonly: true},
		Process: &specs.Process{
			Args: []string{"/warm"}, Cwd: "/", Env: []string{"PATH=/bin"},
			Capabilities:    &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Hostname: "warm",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/run", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: path.Join(CgroupParent, warmID),
			Namespaces:  nss,
			MaskedPaths: []string{"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
				"/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/sys/devices/virtual/powercap", "/proc/scsi"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
}
