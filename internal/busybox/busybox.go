// Package busybox builds the small root filesystems the tests run
// containers from: Debian's static busybox with its applets, as a
// directory, an erofs layer, or an OCI image archive.
package busybox

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// BusyboxPath is where Debian's busybox-static installs busybox.
const BusyboxPath = "/bin/busybox"

// BusyboxRoot fills dir with a minimal root filesystem: busybox, a link for
// each applet, and the usual empty directories.
func BusyboxRoot(dir string) error {
	if _, err := os.Stat(BusyboxPath); err != nil {
		return fmt.Errorf("busybox-static is not installed (%v): run 'make deps'", err)
	}
	for _, d := range []string{"bin", "dev", "etc", "proc", "sys", "tmp", "run", "root", "var", "usr/bin", "sbin"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	data, err := os.ReadFile(BusyboxPath)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
		return err
	}
	out, err := exec.Command(BusyboxPath, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", applet)); err != nil && !os.IsExist(err) {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
		"etc/group":  "root:x:0:\nnobody:x:65534:\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Erofs packs dir into an erofs image.
func Erofs(dir, image string) error {
	if out, err := exec.Command("mkfs.erofs", "--quiet", "-T0", "--all-root", image, dir).CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.erofs: %v: %s", err, out)
	}
	return nil
}

// EmptyExt4 makes an empty ext4 image of sizeMiB.
func EmptyExt4(image string, sizeMiB int) error {
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", image, fmt.Sprintf("%dM", sizeMiB)).CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4: %v: %s", err, out)
	}
	return nil
}
