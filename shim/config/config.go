package config

import (
	_ "embed"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/pelletier/go-toml/v2"

	"github.com/qemu-shim/qemu-shim/api/wire"
)

//go:embed default.toml
var defaultTOML []byte

// EnvPath names the environment variable with the config file's path.
const EnvPath = "QEMU_SHIM_CONFIG"

// DefaultPath is read when it exists and nothing else names a file.
const DefaultPath = "/etc/qemu-shim/config.toml"

// Config is the shim's configuration.
type Config struct {
	VM     VM     `toml:"vm"`
	Rootfs Rootfs `toml:"rootfs"`
	// Operator configures the operator's API (qemu-shim disk ...).
	Operator Operator `toml:"operator"`
	// Template configures starting VMs from saved guests.
	Template Template `toml:"template"`
}

// Template configures VM templates (see vm/template): a guest booted once
// per VM shape and saved, from which VMs are restored instead of booted.
type Template struct {
	Enabled bool   `toml:"enabled"`
	Dir     string `toml:"dir"`
	// MaxAge is how long a template nobody restored from is kept; zero
	// keeps them.
	MaxAge Duration `toml:"max_age"`
	// WarmUp has a VM restored under TCG warm its container path up (see
	// vm.Config.WarmUp).
	WarmUp bool `toml:"warm_up"`
}

// VM configures each VM.
type VM struct {
	Kernel       string `toml:"kernel"`
	Initrd       string `toml:"initrd"`
	Tools        string `toml:"tools"`
	QEMU         string `toml:"qemu"`
	Accel        string `toml:"accel"`
	Transport    string `toml:"transport"`
	CPUs         int    `toml:"cpus"`
	MaxCPUs      int    `toml:"max_cpus"`
	MemoryMiB    int    `toml:"memory_mib"`
	MaxMemoryMiB int    `toml:"max_memory_mib"`
	VirtioMemMiB int    `toml:"virtio_mem_mib"`
	TCGCacheMiB  int    `toml:"tcg_cache_mib"`
	// ConsoleLogMaxKiB bounds each of a VM's console.log and its rotated
	// copy.
	ConsoleLogMaxKiB int      `toml:"console_log_max_kib"`
	BootTimeout      Duration `toml:"boot_timeout"`
	StateRoot        string   `toml:"state_root"`
	KernelParams     []string `toml:"kernel_params"`
	Debug            bool     `toml:"debug"`
	// AllowUnconfined lets QEMU run where it cannot be confined (no
	// seccomp in this QEMU, no setpriv to drop its capabilities).
	AllowUnconfined bool `toml:"allow_unconfined"`
	// QEMUUIDFirst and QEMUUIDCount are the user IDs QEMU runs as, one
	// per VM (vm.Config's).
	QEMUUIDFirst uint32 `toml:"qemu_uid_first"`
	QEMUUIDCount uint32 `toml:"qemu_uid_count"`
	// Virtiofsd serves the containers' bind mounts to the guest.
	Virtiofsd string `toml:"virtiofsd"`
	// OCIRuntime is the OCI runtime the guest runs containers under:
	// crun or runc (wire.OCIRuntimes), both on the tools disk.
	OCIRuntime string `toml:"oci_runtime"`
}

// Rootfs configures how snapshots become disks.
type Rootfs struct {
	LayerCache   string `toml:"layer_cache"`
	UpperSizeMiB int    `toml:"upper_size_mib"`
	// LayerCacheMaxAge is how long a layer image no container has used
	// stays in the cache; zero keeps them forever.
	LayerCacheMaxAge Duration `toml:"layer_cache_max_age"`
}

// Operator configures what the operator's API may do to a running VM.
type Operator struct {
	// DiskRoots are the directories whose images 'qemu-shim disk attach'
	// may attach (after symlinks are resolved); none: no image may be.
	DiskRoots []string `toml:"disk_roots"`
}

// Duration is a time.Duration written as "90s".
type Duration struct{ time.Duration }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Default returns the embedded defaults.
func Default() Config {
	var c Config
	if err := toml.Unmarshal(defaultTOML, &c); err != nil {
		panic(fmt.Sprintf("embedded default config: %v", err))
	}
	return c
}

// Load reads path over the defaults ("" finds the file as the defaults
// describe; a missing default file is fine, a missing named one is not).
func Load(path string) (Config, error) {
	c := Default()
	if path == "" {
		path = os.Getenv(EnvPath)
	}
	if path == "" {
		if _, err := os.Stat(DefaultPath); err != nil {
			return c, c.Validate()
		}
		path = DefaultPath
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("qemu-shim config: %w", err)
	}
	dec := toml.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		var derr *toml.DecodeError
		var serr *toml.StrictMissingError
		switch {
		case errors.As(err, &serr):
			return c, fmt.Errorf("qemu-shim config %s: %s: %w", path, serr.String(), errdefs.ErrInvalidArgument)
		case errors.As(err, &derr):
			row, col := derr.Position()
			return c, fmt.Errorf("qemu-shim config %s:%d:%d: %v: %w", path, row, col, err, errdefs.ErrInvalidArgument)
		}
		return c, fmt.Errorf("qemu-shim config %s: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("qemu-shim config %s: %w", path, err)
	}
	return c, nil
}

// Validate checks ranges.
func (c *Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalidArgument)...)
	}
	v := c.VM
	switch {
	case v.CPUs < 1 || v.CPUs > 255:
		return bad("vm.cpus %d: want 1-255", v.CPUs)
	case v.MaxCPUs < v.CPUs || v.MaxCPUs > 255:
		return bad("vm.max_cpus %d: want %d-255", v.MaxCPUs, v.CPUs)
	case v.MemoryMiB < 128:
		return bad("vm.memory_mib %d: want at least 128", v.MemoryMiB)
	case v.MaxMemoryMiB < v.MemoryMiB:
		return bad("vm.max_memory_mib %d is below vm.memory_mib %d", v.MaxMemoryMiB, v.MemoryMiB)
	case v.VirtioMemMiB < 0 || v.VirtioMemMiB%2 != 0:
		return bad("vm.virtio_mem_mib %d: want 0 or an even number", v.VirtioMemMiB)
	case v.TCGCacheMiB < 1:
		return bad("vm.tcg_cache_mib %d: want at least 1", v.TCGCacheMiB)
	case v.ConsoleLogMaxKiB < 1:
		return bad("vm.console_log_max_kib %d: want at least 1", v.ConsoleLogMaxKiB)
	case v.Accel != "auto" && v.Accel != "kvm" && v.Accel != "tcg":
		return bad("vm.accel %q: want auto, kvm or tcg", v.Accel)
	case v.Transport != "auto" && v.Transport != "vsock" && v.Transport != "serial":
		return bad("vm.transport %q: want auto, vsock or serial", v.Transport)
	case v.BootTimeout.Duration <= 0:
		return bad("vm.boot_timeout %v: want a positive duration", v.BootTimeout)
	case !filepath.IsAbs(v.StateRoot):
		return bad("vm.state_root %q: want an absolute path", v.StateRoot)
	case !slices.Contains(wire.OCIRuntimes, v.OCIRuntime):
		return bad("vm.oci_runtime %q: want one of %s", v.OCIRuntime, strings.Join(wire.OCIRuntimes, ", "))
	case c.Rootfs.UpperSizeMiB < 16:
		return bad("rootfs.upper_size_mib %d: want at least 16", c.Rootfs.UpperSizeMiB)
	case c.Template.Enabled && (!filepath.IsAbs(c.Template.Dir) || filepath.Clean(c.Template.Dir) == "/"):
		return bad("template.dir %q: want an absolute path other than /", c.Template.Dir)
	case c.Template.MaxAge.Duration < 0:
		return bad("template.max_age %v: want 0 or a positive duration", c.Template.MaxAge)
	}
	for _, r := range c.Operator.DiskRoots {
		if !filepath.IsAbs(r) || filepath.Clean(r) == "/" {
			return bad("operator.disk_roots %q: want an absolute path other than /", r)
		}
	}
	return nil
}

// AnnotationPrefix starts every annotation the shim reads.
const AnnotationPrefix = "io.qemu-shim."

// Annotations that override the configuration for one VM.
const (
	AnnotationCPUs         = AnnotationPrefix + "vm.cpus"
	AnnotationMaxCPUs      = AnnotationPrefix + "vm.max_cpus"
	AnnotationMemoryMiB    = AnnotationPrefix + "vm.memory_mib"
	AnnotationKernelParams = AnnotationPrefix + "vm.kernel_params"
	AnnotationDebug        = AnnotationPrefix + "vm.debug"
	AnnotationOCIRuntime   = AnnotationPrefix + "vm.oci_runtime"
)

// AnnotationGroup puts containers into one shim and one VM; the shim's
// manager reads it (see GroupAnnotations).
const AnnotationGroup = AnnotationPrefix + "group"

// GroupAnnotations put containers into one shim and one VM: the first one
// present names the group (Kubernetes' sandbox id makes a pod one VM).
var GroupAnnotations = []string{AnnotationGroup, "io.kubernetes.cri.sandbox-id"}

// KnownAnnotations lists every io.qemu-shim.* annotation the shim knows.
var KnownAnnotations = []string{AnnotationCPUs, AnnotationMaxCPUs, AnnotationMemoryMiB, AnnotationKernelParams, AnnotationDebug, AnnotationOCIRuntime, AnnotationGroup}

// ApplyAnnotations applies a container's io.qemu-shim.* annotations; an
// unknown key or a bad value is an error naming it. Annotations come from
// whoever writes the container's spec, not from the administrator: they
// may choose vCPUs and memory only up to the configuration's vm.max_cpus
// and vm.max_memory_mib (a lower max_cpus is fine), never raise them.
func (c *Config) ApplyAnnotations(annotations map[string]string) error {
	maxCPUs, maxMemoryMiB := c.VM.MaxCPUs, c.VM.MaxMemoryMiB
	for k, v := range annotations {
		if !strings.HasPrefix(k, AnnotationPrefix) {
			continue
		}
		bad := func(want string) error {
			return fmt.Errorf("annotation %s=%q: want %s: %w", k, v, want, errdefs.ErrInvalidArgument)
		}
		switch k {
		case AnnotationCPUs, AnnotationMaxCPUs, AnnotationMemoryMiB:
			least, limit, limitName := 1, maxCPUs, "vm.max_cpus"
			if k == AnnotationMemoryMiB {
				least, limit, limitName = 128, maxMemoryMiB, "vm.max_memory_mib"
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < least {
				return bad(fmt.Sprintf("a whole number of at least %d", least))
			}
			if n > limit {
				return fmt.Errorf("annotation %s=%q: above the configured %s %d: %w", k, v, limitName, limit, errdefs.ErrInvalidArgument)
			}
			switch k {
			case AnnotationCPUs:
				c.VM.CPUs = n
			case AnnotationMaxCPUs:
				c.VM.MaxCPUs = n
			case AnnotationMemoryMiB:
				c.VM.MemoryMiB = n
			}
		case AnnotationKernelParams:
			c.VM.KernelParams = append(c.VM.KernelParams, strings.Fields(v)...)
		case AnnotationDebug:
			b, err := strconv.ParseBool(v)
			if err != nil {
				return bad("true or false")
			}
			c.VM.Debug = b
		case AnnotationOCIRuntime:
			c.VM.OCIRuntime = v // checked by Validate
		case AnnotationGroup:
			// The manager's: it chose the shim this container is in.
		default:
			return fmt.Errorf("unknown annotation %s (known: %s): %w", k, strings.Join(KnownAnnotations, ", "), errdefs.ErrInvalidArgument)
		}
	}
	if v, ok := annotations[AnnotationMaxCPUs]; ok && c.VM.MaxCPUs < c.VM.CPUs {
		return fmt.Errorf("annotation %s=%q: below the %d vCPUs the VM boots with: %w", AnnotationMaxCPUs, v, c.VM.CPUs, errdefs.ErrInvalidArgument)
	}
	if err := c.Validate(); err != nil {
		return fmt.Errorf("with the annotations: %w", err)
	}
	return nil
}

// Size is what a container's resources ask of its VM.
type Size struct {
	// CPUs is the CPU quota rounded up (0: no limit).
	CPUs int
	// MemoryMiB is the memory limit rounded up (0: no limit).
	MemoryMiB int
}

// SizeOf reads a container's CPU quota and memory limit.
func SizeOf(r *specs.LinuxResources) Size {
	var s Size
	if r == nil {
		return s
	}
	if cpu := r.CPU; cpu != nil && cpu.Quota != nil && *cpu.Quota > 0 {
		period := uint64(100000)
		if cpu.Period != nil && *cpu.Period > 0 {
			period = *cpu.Period
		}
		s.CPUs = int(math.Ceil(float64(*cpu.Quota) / float64(period)))
	}
	if m := r.Memory; m != nil && m.Limit != nil && *m.Limit > 0 {
		s.MemoryMiB = int((*m.Limit + (1<<20 - 1)) >> 20)
	}
	return s
}

// The pod's resources as containerd's CRI plugin puts them on the pod's
// sandbox container (the sum of its containers' limits, with the pod's
// overhead).
const (
	AnnotationContainerType    = "io.kubernetes.cri.container-type"
	AnnotationSandboxCPUQuota  = "io.kubernetes.cri.sandbox-cpu-quota"
	AnnotationSandboxCPUPeriod = "io.kubernetes.cri.sandbox-cpu-period"
	AnnotationSandboxMemory    = "io.kubernetes.cri.sandbox-memory"
)

// PodSizeOf reads a pod sandbox's resources from its annotations; it is
// zero for any other container, or a pod without limits.
func PodSizeOf(annotations map[string]string) (Size, error) {
	var s Size
	if annotations[AnnotationContainerType] != "sandbox" {
		return s, nil
	}
	num := func(key string) (int64, error) {
		v, ok := annotations[key]
		if !ok || v == "" {
			return 0, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("annotation %s=%q: want a number of at least 0: %w", key, v, errdefs.ErrInvalidArgument)
		}
		return n, nil
	}
	quota, err := num(AnnotationSandboxCPUQuota)
	if err != nil {
		return s, err
	}
	period, err := num(AnnotationSandboxCPUPeriod)
	if err != nil {
		return s, err
	}
	mem, err := num(AnnotationSandboxMemory)
	if err != nil {
		return s, err
	}
	if quota > 0 {
		if period == 0 {
			period = 100000
		}
		s.CPUs = int(math.Ceil(float64(quota) / float64(period)))
	}
	if mem > 0 {
		s.MemoryMiB = int((mem + (1<<20 - 1)) >> 20)
	}
	return s, nil
}

// Machine is the size a VM boots with.
type Machine struct {
	CPUs, MaxCPUs           int
	MemoryMiB, MaxMemoryMiB int
	VirtioMemMiB            int
}

// Fit is what a VM needs for containers whose CPU quotas and memory limits
// add up to s: the configured vCPUs, or the quota if more; the configured
// memory (the guest's own) plus the limits. The configured maxima bound
// it: when the containers need more, the error names their limit and the
// maximum, and cpus and memMiB are still what they need.
//
// The error is an invalid argument, not resource exhausted: the maxima are
// configuration, so the containers cannot have that VM however long they
// wait (ResourceExhausted is for what may free up, like memory slots).
func (v *VM) Fit(s Size) (cpus, memMiB int, err error) {
	cpus = max(v.CPUs, s.CPUs)
	memMiB = v.MemoryMiB + s.MemoryMiB
	switch {
	case cpus > v.MaxCPUs:
		err = fmt.Errorf("a CPU quota of %d vCPUs is above the configured vm.max_cpus %d: %w", s.CPUs, v.MaxCPUs, errdefs.ErrInvalidArgument)
	case memMiB > v.MaxMemoryMiB:
		err = fmt.Errorf("a memory limit of %d MiB, with the guest's own vm.memory_mib %d, is above the configured vm.max_memory_mib %d: %w",
			s.MemoryMiB, v.MemoryMiB, v.MaxMemoryMiB, errdefs.ErrInvalidArgument)
	}
	return cpus, memMiB, err
}

// Machine sizes the VM of a first container that asks s (see Fit), within
// the configured maxima: memory is rounded up to 128 MiB (as hot-plugged
// DIMMs are) but not past the maximum, and a virtio-mem device is cut to
// what is left below the maximum.
func (v *VM) Machine(s Size) (Machine, error) {
	cpus, mem, err := v.Fit(s)
	if err != nil {
		return Machine{}, err
	}
	mem = min((mem+127)/128*128, v.MaxMemoryMiB)
	return Machine{
		CPUs:         cpus,
		MaxCPUs:      v.MaxCPUs,
		MemoryMiB:    mem,
		MaxMemoryMiB: v.MaxMemoryMiB,
		VirtioMemMiB: min(v.VirtioMemMiB, v.MaxMemoryMiB-mem) &^ 1,
	}, nil
}
