package task

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/qemu-shim/qemu-shim/api/wire"
)

// TestChooseRuntime: the host's annotation picks the runtime and is taken
// out of the spec; without it the default runs; a runtime the guest lacks
// or does not know is refused; crun gets an ociVersion it accepts.
func TestChooseRuntime(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"runc", "crun"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s := New(context.Background(), Config{Root: dir, DefaultRuntime: wire.RuntimeRunc, Events: NewEventLog(0),
		Runtimes: map[string]string{wire.RuntimeRunc: filepath.Join(dir, "runc"), wire.RuntimeCrun: filepath.Join(dir, "crun")}})
	spec := func(runtime string) *specs.Spec {
		s := &specs.Spec{Version: "1.2.1", Annotations: map[string]string{"other": "kept"}}
		if runtime != "" {
			s.Annotations[wire.OCIRuntimeAnnotation] = runtime
		}
		return s
	}

	sp := spec(wire.RuntimeCrun)
	if name, err := s.chooseRuntime(sp); err != nil || name != wire.RuntimeCrun {
		t.Fatalf("crun: %q, %v", name, err)
	}
	if _, ok := sp.Annotations[wire.OCIRuntimeAnnotation]; ok || sp.Annotations["other"] != "kept" {
		t.Errorf("annotations after the choice: %v", sp.Annotations)
	}
	if sp.Version != "1.0.2" {
		t.Errorf("crun's spec has ociVersion %q", sp.Version)
	}

	sp = spec("")
	if name, err := s.chooseRuntime(sp); err != nil || name != wire.RuntimeRunc || sp.Version != "1.2.1" {
		t.Errorf("default: %q, %v, ociVersion %q", name, err, sp.Version)
	}

	if _, err := s.chooseRuntime(spec("youki")); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("unknown runtime: %v", err)
	}
	os.Remove(filepath.Join(dir, "crun"))
	if _, err := s.chooseRuntime(spec(wire.RuntimeCrun)); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("crun missing from the tools: %v", err)
	}
	delete(s.runtimes, wire.RuntimeCrun)
	if _, err := s.chooseRuntime(spec(wire.RuntimeCrun)); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("crun not configured: %v", err)
	}
}
