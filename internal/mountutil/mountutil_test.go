package mountutil

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRemoveAllNeverReachesThroughAMount: a host directory bind-mounted
// inside the removed one keeps its files.
func TestRemoveAllNeverReachesThroughAMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: mounting needs root")
	}
	host := t.TempDir()
	precious := filepath.Join(host, "precious")
	if err := os.WriteFile(precious, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "state with space")
	inner := filepath.Join(state, "share", "c1", "m0")
	if err := os.MkdirAll(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(host, inner, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(inner, unix.MNT_DETACH) })
	if m, err := MountsUnder(state); err != nil || len(m) != 1 || m[0] != inner {
		t.Fatalf("mounts under %s: %v %v", state, m, err)
	}
	if err := RemoveAll(state); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(precious); err != nil || string(b) != "keep me" {
		t.Fatalf("the bind-mounted host file is gone: %v", err)
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("state directory still there: %v", err)
	}
}
