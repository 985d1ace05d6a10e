package bundle

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/qemu-shim/qemu-shim/vm"
)

func TestShimAddress(t *testing.T) {
	dir := t.TempDir()
	if a := ShimAddress(dir); a != "" {
		t.Errorf("empty bundle: %q", a)
	}
	os.WriteFile(filepath.Join(dir, "bootstrap.json"), []byte(`{"version":3,"address":"unix:///run/containerd/s/abc","protocol":"ttrpc"}`), 0o600)
	if a := ShimAddress(dir); a != "unix:///run/containerd/s/abc" {
		t.Errorf("bootstrap.json: %q", a)
	}
}

// The VM's name (its state directory's) is unique per namespace and
// container id, and always a valid VM id that is no other entry of the
// state root.
func TestVMName(t *testing.T) {
	k8sID := strings.Repeat("0123456789abcdef", 4)
	names := map[string][2]string{}
	for _, c := range [][2]string{
		{"default", "crash"},
		{"other", "crash"}, // the same id in another namespace
		{"a_b", "c"},       // "a_b" + "_" + "c" ...
		{"a", "b_c"},       // ... is "a" + "_" + "b_c"
		{"default", vm.CIDLeaseDirName},
		{vm.CIDLeaseDirName, ""},
		{"k8s.io", k8sID},
		{"k8s.io", k8sID[:63] + "0"}, // differs only where the name is cut
		{strings.Repeat("n", 76), strings.Repeat("i", 76)},
		{"", ""},
		{"-lead", "../../etc/é"},
	} {
		name := VMName(c[0], c[1])
		if err := vm.CheckID(name); err != nil {
			t.Errorf("VMName(%q, %q) = %q: %v", c[0], c[1], name, err)
		}
		if !vmName.MatchString(name) {
			t.Errorf("VMName(%q, %q) = %q: ReadVMDir would refuse it", c[0], c[1], name)
		}
		if len(name) > vmNameMax {
			t.Errorf("VMName(%q, %q) = %q: over %d characters (socket paths)", c[0], c[1], name, vmNameMax)
		}
		if other, dup := names[name]; dup {
			t.Errorf("VMName(%q, %q) = VMName(%q, %q) = %q", c[0], c[1], other[0], other[1], name)
		}
		names[name] = c
		if name != VMName(c[0], c[1]) {
			t.Errorf("VMName(%q, %q) changes", c[0], c[1])
		}
	}
	if name := VMName("default", "crash"); !strings.HasPrefix(name, "default_crash-") {
		t.Errorf("VMName(default, crash) = %q: want it readable", name)
	}
}

// The manager removes the directory a bundle names: only one that looks
// like a VM's state directory is accepted.
func TestReadVMDir(t *testing.T) {
	bundle := t.TempDir()
	if _, err := ReadVMDir(bundle); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("no file: got %v, want not exist", err)
	}
	good := filepath.Join("/run/qemu-shim", VMName("default", "crash"))
	for _, tc := range []struct {
		content string
		ok      bool
	}{
		{good, true},
		{good + "/", false},
		{good + "\n", false},
		{"/run/qemu-shim/../qemu-shim/" + VMName("default", "crash"), false},
		{VMName("default", "crash"), false}, // relative (what the file held before)
		{"crash", false},
		{"/", false},
		{"", false},
		{"/etc", false},
		{"/run/qemu-shim", false},
		{"/run/qemu-shim/" + vm.CIDLeaseDirName, false},
		{"/home/me/work-0123456789ABCDEF", false},
	} {
		os.WriteFile(filepath.Join(bundle, VMDirFile), []byte(tc.content), 0o600)
		dir, err := ReadVMDir(bundle)
		switch {
		case tc.ok && (err != nil || dir != tc.content):
			t.Errorf("%q: got %q, %v", tc.content, dir, err)
		case !tc.ok && !errors.Is(err, errdefs.ErrInvalidArgument):
			t.Errorf("%q: got %q, %v; want it refused", tc.content, dir, err)
		}
	}
}
