package task

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// PrepareCgroupParent makes CgroupParent below the cgroup v2 hierarchy at
// root with every controller enabled for its children, as the OCI runtime
// would for the first container: at boot, before a template is saved and
// while nothing else runs. A first non-root memory cgroup switches kernel
// static keys, which rewrites kernel code while the other vCPUs run it; a
// restored VM then never does that under its containers (under an
// emulator, a vCPU was seen to spin on a rewritten instruction for good),
// and its first create does less.
func PrepareCgroupParent(root string) error {
	parent := filepath.Join(root, CgroupParent)
	if err := enableControllers(root); err != nil {
		return err
	}
	if err := os.Mkdir(parent, 0o755); err != nil && !os.IsExist(err) {
		return fmt.Errorf("cgroup %s: %w", CgroupParent, err)
	}
	return enableControllers(parent)
}

// enableControllers enables for dir's children each controller dir has.
func enableControllers(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("cgroup controllers: %w", err)
	}
	var words []string
	for _, c := range strings.Fields(string(b)) {
		words = append(words, "+"+c)
	}
	if len(words) == 0 {
		return nil
	}
	control := filepath.Join(dir, "cgroup.subtree_control")
	if err := os.WriteFile(control, []byte(strings.Join(words, " ")), 0); err == nil {
		return nil
	}
	// One at a time: a controller the kernel refuses leaves the others on.
	var failed []string
	for _, w := range words {
		if err := os.WriteFile(control, []byte(w), 0); err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", w, err))
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("enable controllers in %s: %s", dir, strings.Join(failed, "; "))
	}
	return nil
}
