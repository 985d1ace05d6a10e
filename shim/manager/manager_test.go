package manager

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/runtime-spec/specs-go/features"

	shimbundle "github.com/qemu-shim/qemu-shim/shim/bundle"
)

// Stop removes the VM state directory the bundle records (with no QEMU
// left in it), and nothing a tampered record names.
func TestStopRemovesTheRecordedStateDirectoryOnly(t *testing.T) {
	root := t.TempDir()
	stateDir := filepath.Join(root, "vms", shimbundle.VMName("default", "crash"))
	other := filepath.Join(root, "precious")
	for _, d := range []string{stateDir, other} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(d, "console.log"), []byte("x"), 0o600)
	}
	bundle := filepath.Join(root, "bundle")
	os.Mkdir(bundle, 0o700)
	t.Chdir(bundle)
	m := &manager{name: "test"}

	os.WriteFile(filepath.Join(bundle, shimbundle.VMDirFile), []byte(other), 0o600)
	if _, err := m.Stop(context.Background(), "crash"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(other, "console.log")); err != nil {
		t.Errorf("a bundle file naming %s made Stop remove it: %v", other, err)
	}
	if _, err := os.Stat(filepath.Join(bundle, shimbundle.VMDirFile)); !os.IsNotExist(err) {
		t.Errorf("%s left in the bundle: %v", shimbundle.VMDirFile, err)
	}

	os.WriteFile(filepath.Join(bundle, shimbundle.VMDirFile), []byte(stateDir), 0o600)
	if _, err := m.Stop(context.Background(), "crash"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
		t.Errorf("state directory %s left behind: %v", stateDir, err)
	}
	if _, err := os.Stat(filepath.Join(bundle, shimbundle.VMDirFile)); !os.IsNotExist(err) {
		t.Errorf("%s left in the bundle: %v", shimbundle.VMDirFile, err)
	}
}

// TestInfoOffersRecursiveReadOnly: containerd's CRI plugin reads the
// runtime's features from Info, as it reads runc's: rro on, userns off.
func TestInfoOffersRecursiveReadOnly(t *testing.T) {
	info, err := NewShimManager("io.containerd.qemu.v1").Info(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err := typeurl.UnmarshalAny(info.Features)
	if err != nil {
		t.Fatal(err)
	}
	f, ok := v.(*features.Features)
	if !ok || !slices.Contains(f.MountOptions, "rro") || slices.Contains(f.Linux.Namespaces, "user") {
		t.Errorf("features %+v", v)
	}
}
