package netns

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// The test binary is its own holder, as the shim's binary is.
var isHolder = IsHolder()

// hostNS is the test's own namespace, read before any test made one (a
// thread that unshares may be the main one, which /proc/self shows).
var hostNS string

func TestMain(m *testing.M) {
	if isHolder {
		HolderMain()
	}
	hostNS, _ = os.Readlink("/proc/self/ns/net")
	os.Exit(m.Run())
}

func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	var sa, sb syscall.Stat_t
	if err := syscall.Stat(a, &sa); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(b, &sb); err != nil {
		t.Fatal(err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

func TestHoldNewAndExisting(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: network namespaces need root")
	}
	path := filepath.Join(t.TempDir(), "netns")
	n, err := Hold("", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	if !n.Made || n.Path != path || n.Pid() == 0 {
		t.Fatalf("held %+v", n)
	}
	pidNS := fmt.Sprintf("/proc/%d/ns/net", n.Pid())
	if !sameFile(t, pidNS, path) {
		t.Error("the holder is not in the namespace it holds")
	}
	if l, _ := os.Readlink(pidNS); l == hostNS {
		t.Error("the holder is in the host's namespace")
	}

	// A second holder of the same (existing) namespace leaves it be.
	m, err := Hold(path, "")
	if err != nil {
		t.Fatal(err)
	}
	if m.Made || !sameFile(t, fmt.Sprintf("/proc/%d/ns/net", m.Pid()), path) {
		t.Errorf("holder of an existing namespace: %+v", m)
	}
	holderPid := m.Pid()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", holderPid)); err == nil {
		t.Error("holder still running after Close")
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("a namespace not made here was removed: %v", err)
	}

	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("made namespace still there: %v", err)
	}
	if _, err := Hold(filepath.Join(t.TempDir(), "missing"), ""); err == nil {
		t.Error("holding a missing namespace worked")
	}
}
