package config

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestDefaultsAreValid(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.VM.CPUs != 2 || c.VM.MemoryMiB != 256 || c.VM.BootTimeout.Seconds() != 90 {
		t.Errorf("defaults: %+v", c.VM)
	}
	if len(c.Operator.DiskRoots) != 1 || c.Operator.DiskRoots[0] != "/var/lib/qemu-shim/disks" {
		t.Errorf("operator.disk_roots: %q", c.Operator.DiskRoots)
	}
	if !c.Template.Enabled || c.Template.WarmUp {
		t.Errorf("template: %+v", c.Template)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	os.WriteFile(good, []byte("[vm]\ncpus = 2\nkernel = \"/k\"\n[template]\nwarm_up = true\n"), 0o644)
	c, err := Load(good)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Template.WarmUp || !c.Template.Enabled {
		t.Errorf("template: %+v", c.Template)
	}
	if c.VM.CPUs != 2 || c.VM.Kernel != "/k" || c.VM.MemoryMiB != 256 {
		t.Errorf("got %+v", c.VM)
	}
	for name, body := range map[string]string{
		"unknown.toml":   "[vm]\ncpuz = 2\n",
		"range.toml":     "[vm]\ncpus = 0\n",
		"relative.toml":  "[vm]\nstate_root = \"run/vms\"\n",
		"diskroot.toml":  "[operator]\ndisk_roots = [\"disks\"]\n",
		"slashroot.toml": "[operator]\ndisk_roots = [\"/\"]\n",
		"syntax.toml":    "[vm\n",
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o644)
		if _, err := Load(p); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: got %v", name, err)
		}
	}
	if _, err := Load(filepath.Join(dir, "missing.toml")); err == nil {
		t.Error("a named file that does not exist loaded")
	}
}

func TestAnnotations(t *testing.T) {
	c := Default()
	if err := c.ApplyAnnotations(map[string]string{AnnotationCPUs: "2", AnnotationMemoryMiB: "512", "other.key": "x"}); err != nil {
		t.Fatal(err)
	}
	if c.VM.CPUs != 2 || c.VM.MemoryMiB != 512 {
		t.Errorf("got %+v", c.VM)
	}
	for _, a := range []map[string]string{
		{AnnotationCPUs: "two"},
		{AnnotationCPUs: "-1"},
		{AnnotationPrefix + "vm.cpu": "2"},
		{AnnotationDebug: "maybe"},
	} {
		c := Default()
		err := c.ApplyAnnotations(a)
		for k := range a {
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), k) {
				t.Errorf("%v: got %v", a, err)
			}
		}
	}
}

// Annotations are the pod spec's author's, the maxima the administrator's:
// an annotation may choose within them, never past them.
func TestAnnotationsStayWithinTheConfiguredMaxima(t *testing.T) {
	for _, tc := range []struct {
		name        string
		annotations map[string]string
		// want: the VM's vCPUs, their maximum and its memory; or the
		// strings the error must name.
		cpus, maxCPUs, memMiB int
		errNames              []string
	}{
		{"cpus at max_cpus", map[string]string{AnnotationCPUs: "4"}, 4, 4, 256, nil},
		{"cpus above max_cpus", map[string]string{AnnotationCPUs: "5"}, 0, 0, 0, []string{AnnotationCPUs, `"5"`, "vm.max_cpus 4"}},
		{"lower max_cpus", map[string]string{AnnotationMaxCPUs: "3"}, 2, 3, 256, nil},
		{"raise max_cpus", map[string]string{AnnotationMaxCPUs: "8"}, 0, 0, 0, []string{AnnotationMaxCPUs, `"8"`, "vm.max_cpus 4"}},
		{"max_cpus 255", map[string]string{AnnotationMaxCPUs: "255"}, 0, 0, 0, []string{AnnotationMaxCPUs, `"255"`, "vm.max_cpus 4"}},
		{"cpus and max_cpus", map[string]string{AnnotationCPUs: "3", AnnotationMaxCPUs: "3"}, 3, 3, 256, nil},
		{"max_cpus below cpus", map[string]string{AnnotationCPUs: "3", AnnotationMaxCPUs: "2"}, 0, 0, 0, []string{AnnotationMaxCPUs, `"2"`, "3 vCPUs"}},
		{"memory at max_memory_mib", map[string]string{AnnotationMemoryMiB: "8192"}, 2, 4, 8192, nil},
		{"memory above max_memory_mib", map[string]string{AnnotationMemoryMiB: "8193"}, 0, 0, 0, []string{AnnotationMemoryMiB, `"8193"`, "vm.max_memory_mib 8192"}},
		{"memory huge", map[string]string{AnnotationMemoryMiB: "1000000000"}, 0, 0, 0, []string{AnnotationMemoryMiB, "vm.max_memory_mib 8192"}},
		{"memory too small", map[string]string{AnnotationMemoryMiB: "64"}, 0, 0, 0, []string{AnnotationMemoryMiB, "at least 128"}},
	} {
		// Map order varies: each case runs a few times.
		for range 5 {
			c := Default()
			err := c.ApplyAnnotations(tc.annotations)
			if tc.errNames == nil {
				if err != nil {
					t.Errorf("%s: %v", tc.name, err)
				} else if c.VM.CPUs != tc.cpus || c.VM.MaxCPUs != tc.maxCPUs || c.VM.MemoryMiB != tc.memMiB || c.VM.MaxMemoryMiB != 8192 {
					t.Errorf("%s: got cpus %d max %d, memory %d max %d", tc.name, c.VM.CPUs, c.VM.MaxCPUs, c.VM.MemoryMiB, c.VM.MaxMemoryMiB)
				}
				continue
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("%s: got %v, want an invalid argument", tc.name, err)
				continue
			}
			for _, s := range tc.errNames {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("%s: %q does not name %s", tc.name, err, s)
				}
			}
		}
	}
}

// Every io.qemu-shim.* annotation the README documents is accepted, and
// every one accepted is documented.
func TestREADMEAnnotationsAreAccepted(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	valid := map[string]string{
		AnnotationCPUs:         "2",
		AnnotationMaxCPUs:      "2",
		AnnotationMemoryMiB:    "512",
		AnnotationKernelParams: "quiet",
		AnnotationDebug:        "true",
		AnnotationOCIRuntime:   "runc",
		AnnotationGroup:        "pod1",
	}
	documented := map[string]bool{}
	for _, k := range regexp.MustCompile(`io\.qemu-shim\.[A-Za-z0-9_.-]*[A-Za-z0-9_]`).FindAllString(string(readme), -1) {
		documented[k] = true
	}
	if len(documented) == 0 {
		t.Fatal("no io.qemu-shim.* annotation in the README")
	}
	for k := range documented {
		v, ok := valid[k]
		if !ok {
			t.Errorf("the README documents %s: the shim does not know it (or this test lacks a value for it)", k)
			continue
		}
		c := Default()
		if err := c.ApplyAnnotations(map[string]string{k: v}); err != nil {
			t.Errorf("documented %s=%s: %v", k, v, err)
		}
	}
	for _, k := range KnownAnnotations {
		if !documented[k] {
			t.Errorf("%s is accepted but not in the README", k)
		}
		if _, ok := valid[k]; !ok {
			t.Errorf("%s: no value for it in this test", k)
		}
	}
}

func TestSizeOf(t *testing.T) {
	quota, period, limit := int64(150000), uint64(100000), int64(300<<20+1)
	s := SizeOf(&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: &quota, Period: &period}, Memory: &specs.LinuxMemory{Limit: &limit}})
	if s.CPUs != 2 || s.MemoryMiB != 301 {
		t.Errorf("got %+v", s)
	}
	if s := SizeOf(nil); s != (Size{}) {
		t.Errorf("nil: %+v", s)
	}
}

// A container's own limits size its VM, within the configured maxima: one
// that needs more is refused, the VM is never made bigger than configured.
func TestMachine(t *testing.T) {
	base := Default().VM // 2 vCPUs (at most 4), 256 MiB (at most 8192), no virtio-mem
	for _, tc := range []struct {
		name   string
		vm     func(*VM)
		size   Size
		want   Machine
		errHas []string // the error must name these; nil: no error
	}{
		{"no limits", nil, Size{}, Machine{2, 4, 256, 8192, 0}, nil},
		{"quota", nil, Size{CPUs: 3}, Machine{3, 4, 256, 8192, 0}, nil},
		{"quota at max_cpus", nil, Size{CPUs: 4}, Machine{4, 4, 256, 8192, 0}, nil},
		{"quota above max_cpus", nil, Size{CPUs: 5}, Machine{}, []string{"5 vCPUs", "vm.max_cpus 4"}},
		{"quota above a lowered max_cpus", func(v *VM) { v.MaxCPUs = 2 }, Size{CPUs: 3}, Machine{}, []string{"3 vCPUs", "vm.max_cpus 2"}},
		{"memory rounded up", nil, Size{MemoryMiB: 300}, Machine{2, 4, 640, 8192, 0}, nil},
		{"memory at max_memory_mib", nil, Size{MemoryMiB: 8192 - 256}, Machine{2, 4, 8192, 8192, 0}, nil},
		{"memory above max_memory_mib", nil, Size{MemoryMiB: 8192 - 255}, Machine{}, []string{"7937 MiB", "vm.memory_mib 256", "vm.max_memory_mib 8192"}},
		{"memory far above", nil, Size{MemoryMiB: 1 << 30}, Machine{}, []string{"vm.max_memory_mib 8192"}},
		{"rounding stops at the maximum", func(v *VM) { v.MemoryMiB, v.MaxMemoryMiB = 300, 1000 }, Size{MemoryMiB: 700}, Machine{2, 4, 1000, 1000, 0}, nil},
		{"fixed memory", func(v *VM) { v.MemoryMiB, v.MaxMemoryMiB = 300, 300 }, Size{}, Machine{2, 4, 300, 300, 0}, nil},
		{"virtio-mem fits", func(v *VM) { v.VirtioMemMiB = 2048 }, Size{MemoryMiB: 1000}, Machine{2, 4, 1280, 8192, 2048}, nil},
		{"virtio-mem cut to the maximum", func(v *VM) { v.VirtioMemMiB = 2048 }, Size{MemoryMiB: 7000}, Machine{2, 4, 7296, 8192, 896}, nil},
		{"virtio-mem cut to an even size", func(v *VM) { v.VirtioMemMiB, v.MaxMemoryMiB = 2048, 1001 }, Size{}, Machine{2, 4, 256, 1001, 744}, nil},
		{"no room for virtio-mem", func(v *VM) { v.VirtioMemMiB = 2048 }, Size{MemoryMiB: 8192 - 256}, Machine{2, 4, 8192, 8192, 0}, nil},
	} {
		v := base
		if tc.vm != nil {
			tc.vm(&v)
		}
		m, err := v.Machine(tc.size)
		if tc.errHas == nil {
			if err != nil || m != tc.want {
				t.Errorf("%s: got %+v, %v; want %+v", tc.name, m, err, tc.want)
			}
			continue
		}
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: got %+v, %v; want an invalid argument", tc.name, m, err)
			continue
		}
		for _, s := range tc.errHas {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: %q does not name %s", tc.name, err, s)
			}
		}
	}
}

func TestPodSizeOf(t *testing.T) {
	sandbox := func(kv ...string) map[string]string {
		a := map[string]string{AnnotationContainerType: "sandbox"}
		for i := 0; i+1 < len(kv); i += 2 {
			a[kv[i]] = kv[i+1]
		}
		return a
	}
	for _, tc := range []struct {
		name string
		in   map[string]string
		want Size
		bad  bool
	}{
		{"no limits", sandbox(), Size{}, false},
		{"quota and memory", sandbox(AnnotationSandboxCPUQuota, "150000", AnnotationSandboxCPUPeriod, "100000", AnnotationSandboxMemory, "536870913"), Size{CPUs: 2, MemoryMiB: 513}, false},
		{"default period", sandbox(AnnotationSandboxCPUQuota, "100000"), Size{CPUs: 1}, false},
		{"not a sandbox", map[string]string{AnnotationSandboxMemory: "536870912"}, Size{}, false},
		{"bad number", sandbox(AnnotationSandboxMemory, "lots"), Size{}, true},
		{"negative", sandbox(AnnotationSandboxCPUQuota, "-1"), Size{}, true},
	} {
		got, err := PodSizeOf(tc.in)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("%s: %+v %v, want %+v (error %v)", tc.name, got, err, tc.want, tc.bad)
		}
		if tc.bad && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v is not invalid argument", tc.name, err)
		}
	}
}
