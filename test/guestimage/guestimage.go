// Package guestimage finds the guest kernel and initramfs that 'make guest'
// built, for tests and benchmarks.
package guestimage

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Dir is the guest image directory: $QEMU_SHIM_GUEST_DIR, or build/guest in
// the repository.
func Dir() string {
	if d := os.Getenv("QEMU_SHIM_GUEST_DIR"); d != "" {
		if abs, err := filepath.Abs(d); err == nil {
			return abs
		}
		return d
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "build", "guest")
}

// Image is a built guest.
type Image struct {
	Kernel, Initrd, Tools, KernelVersion string
}

// Find returns the built image, or an error saying how to build it.
func Find() (Image, error) {
	d := Dir()
	img := Image{Kernel: filepath.Join(d, "vmlinux"), Initrd: filepath.Join(d, "initramfs.cpio"), Tools: filepath.Join(d, "tools.erofs")}
	for _, p := range []string{img.Kernel, img.Initrd, img.Tools} {
		if _, err := os.Stat(p); err != nil {
			return img, fmt.Errorf("guest image incomplete (%v): run 'make guest'", err)
		}
	}
	v, _ := os.ReadFile(filepath.Join(d, "kernel-version"))
	img.KernelVersion = strings.TrimSpace(string(v))
	return img, nil
}

// Require returns the image, failing the test if it is missing when the
// run asks for integration tests (QEMU_SHIM_INTEGRATION=1, as 'make test'
// does), and skipping it otherwise.
func Require(t testing.TB) Image {
	t.Helper()
	img, err := Find()
	if err != nil {
		if os.Getenv("QEMU_SHIM_INTEGRATION") == "1" {
			t.Fatal(err)
		}
		t.Skipf("skipping: %v (or set QEMU_SHIM_INTEGRATION=1 to make this an error)", err)
	}
	return img
}
