package task

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	agentapi "github.com/qemu-shim/qemu-shim/api/agent/v1"
)

// ShareMountPoint is where the host's share of files (virtio-fs) is
// mounted in the guest.
const ShareMountPoint = "/run/qemu-shim/share"

// MountShare returns a function that mounts the host's share at dir the
// first time it is called and returns dir; every later call returns what
// the first did. Nothing on it is a device or set-uid, whatever the host
// put there.
func MountShare(dir string) func() (string, error) {
	return sync.OnceValues(func() (string, error) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", err
		}
		if err := unix.Mount(agentapi.ShareTag, dir, "virtiofs", unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
			return "", fmt.Errorf("mount the host's share (virtio-fs %s) on %s: %w", agentapi.ShareTag, dir, err)
		}
		return dir, nil
	})
}
