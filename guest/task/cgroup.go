package task

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// PrepareCgroupParent makes CgroupParent below the cgroup v2 hierarchy at
// root with every controller enabled for its children, as the OCI runtime
// would for the first container: at boot, before any container and before
// a template is saved. A first non-root memory cgroup switches kernel
// static keys, which rewrites kernel code while the other vCPUs run it; a
// restored VM then does not do that under its first container (under an
// emulator, vCPUs were seen to spin on a rewritten instruction for good),
// and its first create does less. Other keys still switch with the
// containers that need them (a first CPU limit, a first device filter).
// A controller the kernel refuses is named in the error; the others, and
// the parent, are made all the same.
func PrepareCgroupParent(root string) error {
	parent := filepath.Join(root, CgroupParent)
	errRoot := enableControllers(root)
	if err := os.Mkdir(parent, 0o755); err != nil && !os.IsExist(err) {
		return errors.Join(errRoot, fmt.Errorf("cgroup %s: %w", CgroupParent, err))
	}
	return errors.Join(errRoot, enableControllers(parent))
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
	if err := os.WriteFile(control, []byte(strings.Join(words, " ")), 0o644); err == nil {
		return nil
	}
	// One at a time: a controller the kernel refuses leaves the others on.
	var failed []string
	for _, w := range words {
		if err := os.WriteFile(control, []byte(w), 0o644); err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", w, err))
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("enable controllers in %s: %s", dir, strings.Join(failed, "; "))
	}
	return nil
}
