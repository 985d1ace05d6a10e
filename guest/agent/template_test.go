package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// Prepare waits for a namespace by what the path is, not by its existence:
// taskd creates the mount point before it mounts the namespace on it.
func TestIsNamespace(t *testing.T) {
	file := filepath.Join(t.TempDir(), "containers")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]bool{
		"/proc/self/ns/net": true,
		file:                false,
		file + ".missing":   false,
	} {
		if got := isNamespace(path); got != want {
			t.Errorf("isNamespace(%s) = %v, want %v", path, got, want)
		}
	}
}
