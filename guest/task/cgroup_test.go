package task

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A plain directory stands in for cgroupfs: the test checks what is
// written where, not the kernel's answer.
func TestPrepareCgroupParentEnablesEveryController(t *testing.T) {
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte("cpuset cpu io memory pids\n"), 0o644)
	parent := filepath.Join(root, CgroupParent)
	os.Mkdir(parent, 0o755) // cgroupfs fills a new group's files; here they are made first
	os.WriteFile(filepath.Join(parent, "cgroup.controllers"), []byte("cpu memory pids\n"), 0o644)
	if err := PrepareCgroupParent(root); err != nil {
		t.Fatal(err)
	}
	for dir, want := range map[string]string{root: "+cpuset +cpu +io +memory +pids", parent: "+cpu +memory +pids"} {
		got, _ := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
		if string(got) != want {
			t.Errorf("%s: subtree_control %q, want %q", dir, got, want)
		}
	}
}

func TestPrepareCgroupParentWithoutCgroupsSaysSo(t *testing.T) {
	err := PrepareCgroupParent(t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "cgroup controllers") {
		t.Fatalf("got %v", err)
	}
}
