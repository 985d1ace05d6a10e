package config

import (
	"errors"
	"os"
	"path/filepath"
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
	if c.VM.CPUs != 1 || c.VM.MemoryMiB != 256 || c.VM.BootTimeout.Seconds() != 90 {
		t.Errorf("defaults: %+v", c.VM)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	os.WriteFile(good, []byte("[vm]\ncpus = 2\nkernel = \"/k\"\n"), 0o644)
	c, err := Load(good)
	if err != nil {
		t.Fatal(err)
	}
	if c.VM.CPUs != 2 || c.VM.Kernel != "/k" || c.VM.MemoryMiB != 256 {
		t.Errorf("got %+v", c.VM)
	}
	for name, body := range map[string]string{
		"unknown.toml": "[vm]\ncpuz = 2\n",
		"range.toml":   "[vm]\ncpus = 0\n",
		"syntax.toml":  "[vm\n",
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
