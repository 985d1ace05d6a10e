package nsthread

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDoNeverTouchesTheMainThread: however often it runs, the namespace
// /proc/self shows stays the process's.
func TestDoNeverTouchesTheMainThread(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: unshare needs root")
	}
	before, _ := os.Readlink("/proc/self/ns/net")
	for i := 0; i < 20; i++ {
		if err := Do(func() error {
			if unix.Gettid() == unix.Getpid() {
				t.Error("ran on the main thread")
			}
			return unix.Unshare(unix.CLONE_NEWNET)
		}); err != nil {
			t.Fatal(err)
		}
	}
	if after, _ := os.Readlink("/proc/self/ns/net"); after != before {
		t.Errorf("the main thread's namespace changed: %s → %s", before, after)
	}
}
